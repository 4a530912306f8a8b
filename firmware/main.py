"""Boot entry point. On a board MicroPython runs this file after boot.py:
board.json and config.json sit beside it. On the unix port:

    micropython firmware/main.py hardware/boards/unix.json CONFIG.json
"""

import sys

import app

app.main(*(sys.argv[1:3] if len(sys.argv) > 2 else ()))
