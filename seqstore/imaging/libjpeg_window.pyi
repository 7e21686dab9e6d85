from typing_extensions import Buffer

def crop(
    data: Buffer, out: Buffer, top: int, left: int, height: int, width: int, scale: int, /
) -> bool: ...
