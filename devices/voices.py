"""The voices of the offline speech engine (eSpeak NG) per language: the controller speaks alerts
and programmes with them, and a terminal's agent speaks text it must say itself."""

VOICES = (("zh", "cmn"), ("cmn", "cmn"), ("yue", "yue"), ("en-GB", "en-gb"), ("en", "en-us"))


class SpeechFailed(RuntimeError):
    """The engine could not speak this text (an unsupported language, an engine error)."""


def voice_for(language: str) -> str:
    for prefix, voice in VOICES:
        if language == prefix or language.startswith(prefix + "-"):
            return voice
    raise SpeechFailed(f"no voice for language {language!r}; supported: zh-CN, yue, en, en-GB")
