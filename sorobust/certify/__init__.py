"""Certificates: CRC (this package's core) and, later, the CROWN/IBP/COAP baselines."""

from .crc import CRCResult, crc, runner_up

__all__ = ["CRCResult", "crc", "runner_up"]
