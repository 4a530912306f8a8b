"""deploy/ansible: ansible-lint (production profile), the syntax check, and a converge
of site.yml into a real Debian root through the chroot connection.

The converge (root and debootstrap needed, else skipped): a bookworm minbase root is
debootstrapped once a day from the host's Debian mirror and cached as a tarball in
/tmp; it includes the packages the roles install (python3-venv, mosquitto, chrony,
systemd...), so the roles' apt tasks find them present and the converge itself needs
no network. Each session unpacks the tarball, makes a throwaway vault (random
passwords, a fresh broker key from deploy/mosquitto/make-certs.sh) and a wheelhouse
(gridbid's wheel built from this checkout plus its pinned dependencies, with the host's
pip settings: the root trusts no proxy CA), runs site.yml with --diff -v (a secret
a task forgot to hide would show), then again: nothing may change; then once more
after a new build of the same gridbid version: only gridbid is reinstalled.
What it really does in the root: user, folders, a virtualenv with gridbid and every
dependency, hub.toml checked by the hub's own loader, `gridbid hub keys`, the unit
checked by systemd-analyze, mosquitto_passwd, chrony.conf checked by chronyd.
What it cannot do: start services (no systemd runs in a chroot: units are installed
and linked into multi-user.target.wants, the restart handlers are skipped).
"""

import base64
import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from helpers import wheel as wheel_build

from simulator import vm

ROOT = vm.ROOT
ANSIBLE = ROOT / "deploy" / "ansible"
MOSQUITTO = ROOT / "deploy" / "mosquitto"
BIN = ROOT / ".venv" / "bin"
SUITE = "bookworm"
# python3-apt: ansible's apt module; python3-packaging: its pip module.
PACKAGES = "python3,python3-apt,python3-packaging,python3-venv,mosquitto,chrony,systemd"
PASSWORDS = ("gridbid-hub", "homeassistant", "operator")
REBUILT = "# rebuilt by tests/deploy/test_ansible.py\n"


def ansible_env(home):
    """Only our settings: this ansible.cfg, a private ANSIBLE_HOME, no colour, and no
    PIP_* variables (they would leak into the chroot's pip)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PIP_"))}
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"),
        ANSIBLE_HOME=str(home),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PATH="%s:%s" % (BIN, env.get("PATH", "/usr/bin:/bin")),
    )
    return env


def run(argv, env, cwd=ANSIBLE, timeout=600):
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    return ansible_env(tmp_path_factory.mktemp("ansible-home"))


def test_ansible_lint_production_profile(env):
    result = run([BIN / "ansible-lint"], env, timeout=300)  # deploy/ansible/.ansible-lint
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Profile 'production' was required, and it passed" in out, out


def test_syntax_check_and_example_inventory(env):
    inventory = ANSIBLE / "inventory.example.yml"
    result = run([BIN / "ansible-playbook", "-i", inventory, "--syntax-check", "site.yml"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([BIN / "ansible-inventory", "-i", inventory, "--list"], env)
    assert result.returncode == 0, result.stderr
    groups = json.loads(result.stdout)
    for group in ("hubs", "brokers"):
        assert groups[group]["hosts"] == ["hub-north.local", "hub-south.local"]


def test_vault_example_names_every_vault_variable_and_defines_none():
    example = ANSIBLE / "group_vars" / "all" / "vault.example.yml"
    # ansible loads group_vars/all/*.yml: the example must define nothing.
    assert yaml.safe_load(example.read_text()) is None
    used = set()
    for path in ANSIBLE.glob("roles/*/*/*.yml"):
        used |= set(re.findall(r"\bvault_\w+", path.read_text()))
    assert used == {"vault_mosquitto_passwords", "vault_broker_tls_keys", "vault_hub_keys"}
    assert used <= set(re.findall(r"\bvault_\w+", example.read_text()))


# --- the converge ------------------------------------------------------------------


def mirror():
    """GRIDBID_DEBIAN_MIRROR, else the host's Debian mirror (apt sources), else deb.debian.org."""
    if os.environ.get("GRIDBID_DEBIAN_MIRROR"):
        return os.environ["GRIDBID_DEBIAN_MIRROR"]
    sources = Path("/etc/apt/sources.list.d").glob("*.sources")
    for path in [Path("/etc/apt/sources.list"), *sources]:
        text = path.read_text() if path.is_file() else ""
        for uri in re.findall(r"^(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def debian_tarball():
    """A debootstrapped root as a tarball, made once a day (keyed by date and packages)."""
    if os.geteuid() != 0:
        pytest.skip("the converge needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        pytest.skip("no debootstrap here (./dev.sh installs it)")
    source = mirror()
    key = hashlib.sha256(("%s %s %s" % (SUITE, PACKAGES, source)).encode()).hexdigest()[:8]
    tmp = Path(tempfile.gettempdir())
    tarball = tmp / ("gridbid-ansible-%s-%s-%s.tar" % (SUITE, datetime.date.today(), key))
    if not tarball.exists():
        for old in tmp.glob("gridbid-ansible-*.tar"):
            old.unlink()
        work = Path(tempfile.mkdtemp(prefix="gridbid-debootstrap-"))
        try:
            argv = ["debootstrap", "--variant=minbase", "--include=" + PACKAGES, SUITE,
                    work / "root", source]  # fmt: skip
            result = run(argv, os.environ, cwd=work, timeout=900)
            assert result.returncode == 0, "debootstrap from %s failed:\n%s" % (
                source, (result.stdout + result.stderr)[-3000:])  # fmt: skip
            partial = tarball.with_suffix(".partial%d" % os.getpid())
            subprocess.run(["tar", "--numeric-owner", "-cf", partial, "-C", work / "root", "."],
                           check=True)  # fmt: skip
            partial.rename(tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


PIP_WHEEL = [BIN / "python", "-m", "pip", "wheel", "-q"]


def build_wheels(out):
    """gridbid's wheel from a copy of this checkout (out/src), and a tar of its pinned
    dependencies' wheels: the hub's, without the sim extra, as the role installs it."""
    wheel_build.copy_source(out / "src")
    wheel = wheel_build.build(out / "src", out / "dist", python=BIN / "python")
    result = run(PIP_WHEEL + ["-w", out / "wheels", wheel], os.environ, cwd=out)
    assert result.returncode == 0, result.stderr
    for own in (out / "wheels").glob("gridbid-*.whl"):
        own.unlink()
    with tarfile.open(out / "wheelhouse.tar", "w") as tar:
        tar.add(out / "wheels", arcname=".")
    return wheel, out / "wheelhouse.tar"


class Converge:
    """The converged root, the runs' output and the throwaway secrets."""


@pytest.fixture(scope="session")
def converged(debian_tarball, env, tmp_path_factory):
    started = time.monotonic()
    base = tmp_path_factory.mktemp("converge")
    c = Converge()
    c.root = base / "root"
    c.root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", debian_tarball, "-C", c.root], check=True)
    wheel, wheelhouse = build_wheels(base)
    certs = base / "certs"
    subprocess.run(["sh", MOSQUITTO / "make-certs.sh", certs, "pi.local"], check=True,
                   capture_output=True)  # fmt: skip
    c.passwords = {user: secrets.token_urlsafe(12) for user in PASSWORDS}
    c.tls_key = (certs / "broker.key").read_text()
    inventory = base / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    vault = inventory / "group_vars" / "all" / "vault.yml"
    vault.write_text(yaml.safe_dump(
        {"vault_mosquitto_passwords": c.passwords, "vault_broker_tls_keys": {"pi": c.tls_key}}
    ))  # fmt: skip
    password_file = base / "vault-password"
    password_file.write_text(secrets.token_hex(16))
    password = ["--vault-password-file", password_file]
    result = run([BIN / "ansible-vault", "encrypt", *password, vault], env)
    assert result.returncode == 0, result.stderr
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    host = {
        "ansible_connection": "community.general.chroot",
        "ansible_host": str(c.root),
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become": False,  # already root; the root has no sudo
        "hub_wheel": str(wheel),
        "hub_wheelhouse": str(wheelhouse),
        "hub_integrations": {"mqtt": {"host": "localhost", "port": 1883}},
        "broker_tls_ca_cert": str(certs / "ca.crt"),
        "broker_tls_cert": str(certs / "broker.crt"),
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "hosts": {"pi": host},
        "children": {"hubs": {"hosts": {"pi": None}}, "brokers": {"hosts": {"pi": None}}},
    }}))  # fmt: skip
    c.seconds = {"setup": time.monotonic() - started}
    c.runs = []
    for n in (1, 2, 3):
        if n == 3:  # a new build of the same version, with a change to roll out
            with open(base / "src" / "hub" / "__init__.py", "a") as f:
                f.write(REBUILT)
            assert wheel_build.build(base / "src", base / "dist", python=BIN / "python") == wheel
        started = time.monotonic()
        argv = [BIN / "ansible-playbook", "-i", inventory / "hosts.yml", *password,
                "--diff", "-v", "site.yml"]  # fmt: skip
        c.runs.append(run(argv, env, timeout=600))
        c.seconds["run%d" % n] = time.monotonic() - started
    print("converge timings (s): %s" % {k: round(v, 1) for k, v in c.seconds.items()})
    yield c
    shutil.rmtree(base, ignore_errors=True)


def changed_tasks(out):
    """The names of the tasks that reported a change."""
    names, task = [], None
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:") and task not in names:
            names.append(task)
    return names


def recap(result):
    out = result.stdout + result.stderr
    found = re.search(r"^pi\s+:\s+(.*)$", out, re.M)
    assert found, out[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}, out


def uid(root, name):
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3]), fields[5], fields[6]
    raise AssertionError("no user %s in the root's /etc/passwd" % name)


def mode(path):
    st = path.stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


@pytest.mark.timeout(1200)
def test_converge_then_second_run_changes_nothing(converged):
    first, out1 = recap(converged.runs[0])
    assert converged.runs[0].returncode == 0 and first["failed"] == 0, out1[-5000:]
    assert first["changed"] > 10, out1[-3000:]
    second, out2 = recap(converged.runs[1])
    assert converged.runs[1].returncode == 0 and second["failed"] == 0, out2[-5000:]
    assert second["changed"] == 0, "second run changed %s" % changed_tasks(out2)
    # No systemd runs in a chroot: the systemd tasks were skipped (not run and failed).
    for task in ("hub : Enable and start the hub", "broker : Enable and start mosquitto"):
        block = out1.split("TASK [%s" % task, 1)[1].split("TASK [", 1)[0]
        assert "skipping: [pi]" in block, task


@pytest.mark.timeout(1200)
def test_a_new_build_of_the_same_version_is_reinstalled(converged):
    third, out = recap(converged.runs[2])
    assert converged.runs[2].returncode == 0 and third["failed"] == 0, out[-5000:]
    assert changed_tasks(out) == [
        "hub : Copy the gridbid wheel",
        "hub : Reinstall gridbid from a new build of the same version",
    ]
    (init,) = (converged.root / "opt/gridbid/venv/lib").glob(
        "python3*/site-packages/hub/__init__.py"
    )
    assert init.read_text().endswith(REBUILT)


@pytest.mark.timeout(1200)
def test_no_secret_in_the_output(converged):
    out = "".join(r.stdout + r.stderr for r in converged.runs)
    keys = json.loads((converged.root / "etc/gridbid/keys/hub-keys.json").read_text())
    secrets_seen = [*converged.passwords.values(), keys["master"], keys["group"]]
    for own in (converged.root / "etc/gridbid/keys").glob("aggregator-*.json"):
        secrets_seen.append(json.loads(own.read_text())["master"])  # hosted identities
    secrets_seen += [line for line in converged.tls_key.splitlines() if "-----" not in line]
    leaked = [s for s in secrets_seen if s in out]
    assert not leaked, "%d secrets in ansible's output (--diff -v)" % len(leaked)


@pytest.mark.timeout(1200)
def test_hub_user_folders_keys_and_config(converged):
    root = converged.root
    user, group, home, shell = uid(root, "gridbid")
    assert (home, shell) == ("/var/lib/gridbid", "/usr/sbin/nologin")
    assert user < 1000, "a system user"
    assert mode(root / "var/lib/gridbid") == (user, group, 0o750)
    assert mode(root / "etc/gridbid") == (0, group, 0o750)
    assert mode(root / "etc/gridbid/keys") == (user, group, 0o700)
    for secret in ("hub-keys.json", "mqtt-credentials.json"):
        assert mode(root / "etc/gridbid/keys" / secret) == (user, group, 0o600), secret
    keys = json.loads((root / "etc/gridbid/keys/hub-keys.json").read_text())
    assert set(keys) == {"master", "group"} and len(keys["group"]) == 64  # the hub's own
    for key_id in (1, 2, 3):  # each hosted aggregator's own identity, beside the hub's keys
        own = root / ("etc/gridbid/keys/aggregator-%d.json" % key_id)
        assert mode(own) == (user, group, 0o600)
        assert json.loads(own.read_text())["master"] not in json.dumps(keys)
    mqtt = json.loads((root / "etc/gridbid/keys/mqtt-credentials.json").read_text())
    assert mqtt == {"username": "gridbid-hub", "password": converged.passwords["gridbid-hub"]}
    config = tomllib.loads((root / "etc/gridbid/hub.toml").read_text())
    assert config["hub"]["store"] == "/var/lib/gridbid/gridbid-hub.sqlite"
    assert config["hub"]["keys_file"] == "/etc/gridbid/keys/hub-keys.json"
    assert [a["key_id"] for a in config["aggregator"]] == [1, 2, 3]
    assert config["mqtt"]["credentials_file"] == "/etc/gridbid/keys/mqtt-credentials.json"
    # The installed hub loads its config and keys, as its own user, in the root.
    check = "from hub.config import hub_toml; print(sorted(hub_toml.load('/etc/gridbid/hub.toml')))"
    result = run(["chroot", root, "setpriv", "--reuid=gridbid", "--regid=gridbid",
                  "--init-groups", "/opt/gridbid/venv/bin/python", "-c", check],
                 os.environ, cwd="/")  # fmt: skip
    assert result.returncode == 0 and "'keys'" in result.stdout, result.stderr


HARDENING = [
    "User=gridbid", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
    "PrivateTmp=yes", "ReadWritePaths=/var/lib/gridbid", "CapabilityBoundingSet=",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK", "KillSignal=SIGINT",
    "LimitNOFILE=65536",  # issue 17 row 5: not systemd's 1024
    "ExecStart=/opt/gridbid/venv/bin/gridbid hub run --config /etc/gridbid/hub.toml",
]  # fmt: skip


@pytest.mark.timeout(1200)
def test_hub_unit_hardened_enabled_and_journal_bounded(converged):
    root = converged.root
    unit = root / "etc/systemd/system/gridbid-hub.service"
    lines = unit.read_text().splitlines()
    assert [h for h in HARDENING if h not in lines] == []
    link = root / "etc/systemd/system/multi-user.target.wants/gridbid-hub.service"
    assert os.readlink(link) == "/etc/systemd/system/gridbid-hub.service"
    result = run(["chroot", root, "systemd-analyze", "security", "--offline=yes",
                  "/etc/systemd/system/gridbid-hub.service"], os.environ, cwd="/")  # fmt: skip
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert exposure and float(exposure.group(1)) <= 2.0, result.stdout[-2000:] + result.stderr
    journald = (root / "etc/systemd/journald.conf.d/gridbid.conf").read_text()
    assert "SystemMaxUse=200M" in journald and "SystemMaxFileSize=20M" in journald


def pbkdf2_matches(password, hashed):
    _, kind, rounds, salt, digest = hashed.split("$")
    made = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(rounds))
    return kind == "7" and made == base64.b64decode(digest)


@pytest.mark.timeout(1200)
def test_broker_files_from_the_repository_and_the_vault(converged):
    etc = converged.root / "etc/mosquitto"
    assert (etc / "mosquitto.conf").read_text() == (MOSQUITTO / "mosquitto.conf").read_text()
    assert (etc / "gridbid.acl").read_text() == (MOSQUITTO / "gridbid.acl").read_text()
    mosquitto, group, _home, _shell = uid(converged.root, "mosquitto")
    for secret in ("gridbid.passwd", "gridbid.acl", "certs/broker.key"):
        assert mode(etc / secret) == (mosquitto, group, 0o600), secret
    assert (etc / "certs/broker.key").read_text().strip() == converged.tls_key.strip()
    entries = dict(
        line.split(":", 1) for line in (etc / "gridbid.passwd").read_text().split()
    )  # fmt: skip
    assert set(entries) == set(PASSWORDS)
    for user, password in converged.passwords.items():
        assert pbkdf2_matches(password, entries[user]), user
    assert not pbkdf2_matches("wrong", entries["operator"])
    wants = converged.root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "mosquitto.service").exists()


@pytest.mark.timeout(1200)
def test_chrony_config_and_wait_for_sync(converged):
    conf = (converged.root / "etc/chrony/chrony.conf").read_text().splitlines()
    assert "pool 2.debian.pool.ntp.org iburst" in conf
    assert "makestep 1 3" in conf
    wants = converged.root / "etc/systemd/system/multi-user.target.wants"
    assert os.readlink(wants / "chrony-wait.service") == "/lib/systemd/system/chrony-wait.service"
