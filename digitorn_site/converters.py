"""URL converters shared by every app's routes."""

APP_ID_PATTERN = r"[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,127}"


class AppIdConverter:
    regex = APP_ID_PATTERN

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class NameConverter:
    """Session ids, tool names, task ids, secret keys: no slashes, no path tricks."""

    regex = r"[A-Za-z0-9_.:\-]{1,200}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value
