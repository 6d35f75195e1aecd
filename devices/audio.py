"""Audio formats, as both sides of the wire tell them: by the file's first bytes, not its name."""


def sniff(data: bytes) -> str | None:
    """The audio format the bytes begin like, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None
