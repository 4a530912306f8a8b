"""What competition pays, on the status page: the live market's gain by the number
of aggregators that bid (from the store), and the latest `gridbid experiment`
results ([web] experiment_json, a file the operator writes with --json)."""

import json
from pathlib import Path

from fastapi import HTTPException

from hub.store import views as queries

MAX_JSON = 4 * 1024 * 1024  # bytes of experiment results read at most
RUN_FIELDS = ("aggregators", "mean_price", "mean_price_ci", "kwh_offered", "kwh_sold",
              "sold_share", "revenue_c", "revenue_c_ci", "owners_surplus_c",
              "aggregators_surplus_c", "welfare_c", "mean_reserve", "theory_price",
              "gain")  # fmt: skip


def experiment(path):
    """The results file's parameters, baselines and runs (a whitelist of fields);
    HTTPException 404 without one, 422 when it is not experiment results."""
    if not path or not Path(path).is_file():
        raise HTTPException(404, "no experiment results (set [web] experiment_json and run "
                                 "`gridbid experiment --json FILE`)")  # fmt: skip
    if Path(path).stat().st_size > MAX_JSON:
        raise HTTPException(422, "experiment results over %d bytes" % MAX_JSON)
    try:
        data = json.loads(Path(path).read_bytes())
        runs = [{k: run.get(k) for k in RUN_FIELDS} for run in data["runs"]]
        baselines = {name: {k: f.get(k) for k in RUN_FIELDS if k in f}
                     for name, f in data["baselines"].items()}  # fmt: skip
        parameters = dict(data["parameters"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise HTTPException(422, "%s is not `gridbid experiment --json` results"
                            % Path(path).name) from None  # fmt: skip
    return {"parameters": parameters, "baselines": baselines, "runs": runs}


def add_routes(app, web):
    @app.get("/api/competition", tags=["competition"])
    async def competition():
        """The live market's gain by competition: per number of aggregators that bid in
        a cleared slot, its slots, kWh sold, price, the reserves of what sold (what a
        buyer posting each battery's reserve would pay) and the improvement over them."""
        return {"items": await web.cache(queries.competition)}

    @app.get("/api/experiment", tags=["competition"])
    async def latest_experiment():
        """The latest `gridbid experiment` results: per N and baseline, price and revenue
        with their 95 % intervals, and the gains over each baseline."""
        return experiment(web.settings["experiment_json"])
