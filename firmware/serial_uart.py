"""A board's machine.UART as a serial port (serial_port.py's interface), with an
optional RS-485 driver-enable pin. Boards only: the unix port never loads it."""

import asyncio

import machine


class UartPort:
    """machine.UART behind asyncio streams; de_pin high while transmitting."""

    def __init__(self, uart, baudrate, de_pin=None):
        self.uart = uart
        self.baudrate = baudrate
        self.de = de_pin
        if de_pin is not None:
            de_pin.value(0)  # listen until we talk
        self._reader = asyncio.StreamReader(uart)
        self._writer = asyncio.StreamWriter(uart, {})

    async def read(self, n):
        while True:
            data = await self._reader.read(n)
            if data:
                return data

    async def write(self, data):
        if self.de is not None:
            self.de.value(1)
        try:
            self._writer.write(data)
            await self._writer.drain()
            # drain() returns when the bytes are in the UART buffer, not on the wire:
            # sleep most of the transmit time, then flush() waits out the rest.
            tx_ms = len(data) * 11000 // self.baudrate
            if tx_ms > 1:
                await asyncio.sleep((tx_ms - 1) / 1000)
            if hasattr(self.uart, "flush"):
                self.uart.flush()
        finally:
            if self.de is not None:
                self.de.value(0)

    def discard(self):
        while self.uart.any():
            self.uart.read()

    def close(self):
        if hasattr(self.uart, "deinit"):
            self.uart.deinit()


def open_port(link, uart=None):
    """serial_port.open_port() for a {"uart": N, ...} link; uart: the board's pins."""
    pins = uart or {}
    return open_uart(
        pins.get("id", link["uart"]), link.get("baud", pins.get("baud", 9600)),
        link.get("tx", pins.get("tx")), link.get("rx", pins.get("rx")),
        link.get("de", pins.get("de")),
    )  # fmt: skip


def open_uart(uart_id, baudrate=9600, tx=None, rx=None, de=None):
    """A board UART (pins by number; de = RS-485 driver-enable pin, high to transmit)."""
    if not hasattr(machine, "UART"):
        raise ValueError("this port has no machine.UART: use a tty path")
    kwargs = {"baudrate": baudrate}
    if tx is not None:
        kwargs["tx"] = tx
    if rx is not None:
        kwargs["rx"] = rx
    uart = machine.UART(uart_id, **kwargs)
    pin = machine.Pin(de, machine.Pin.OUT) if de is not None else None
    return UartPort(uart, baudrate, pin)
