from typing_extensions import Buffer

def crop(
    data: Buffer, top: int, left: int, height: int, width: int, scale: int, /
) -> tuple[bytearray, int, int] | None: ...
