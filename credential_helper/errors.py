"""One exception tree; each class carries the exit status the CLI returns.

    HelperError                 5  unexpected internal failure
    ├── ServerRefusedError      1  the server answered 401, 403 or another 4xx
    ├── InputError              2  bad input or usage
    │   └── RealmRefusedError   2  a realm rule refused to send credentials
    ├── IdentityError           3  no usable key (missing, permissions, encrypted,
    │                              wrong type, unreadable, malformed)
    ├── NetworkError            4  connection, DNS, TLS, timeout, 5xx, redirect,
    │   │                          malformed or oversized response
    │   └── ListenError         4  proxy/gate cannot listen: port in use, address
    │                              not this machine's, permission denied
    └── OutputError             6  standard output is closed, full or a broken
                                   pipe: the result was not delivered

Messages never contain a token, signature or API key: they are printed on
stderr, which callers log. An error may also carry its ``fix``: one line the user
can act on, set where the failure is diagnosed (never guessed later from the
message's words); ``doctor`` shows it.
"""

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_IDENTITY = 3
EXIT_NETWORK = 4
EXIT_INTERNAL = 5
EXIT_OUTPUT = 6


class HelperError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = EXIT_INTERNAL
    fix: str | None = None  # what to do about it, when the raiser knows

    def __init__(self, message: str = "", *, fix: str | None = None) -> None:
        super().__init__(message)
        if fix is not None:
            self.fix = fix


class ServerRefusedError(HelperError):
    """The server understood the request and refused it (4xx)."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, status: int | None = None, *, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.status = status


class InputError(HelperError):
    """The challenge, URL, JSON or command line is not usable."""

    exit_code = EXIT_USAGE


class RealmRefusedError(InputError):
    """Sending a signature to this realm would break a rule (scheme, origin)."""


class IdentityError(HelperError):
    """No key that can sign: missing, unsafe permissions, encrypted, wrong type."""

    exit_code = EXIT_IDENTITY


class NetworkError(HelperError):
    """The exchange failed on the way: network, TLS, 5xx, bad response."""

    exit_code = EXIT_NETWORK

    def __init__(self, message: str, status: int | None = None, *, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.status = status


class ListenError(NetworkError):
    """``proxy`` or ``gate`` cannot listen on the address it was given."""


class KeyNotFoundError(IdentityError):
    """The identity file does not exist (the only case that allows the API-key fallback)."""

    def __init__(self, message: str, path: str, *, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.path = path


class OutputError(HelperError):
    """The result could not be written to standard output (closed, full, broken pipe).

    Nothing is wrong with the helper or the credential; the caller stopped
    listening. Not 0: whoever runs the helper did not get the token.
    """

    exit_code = EXIT_OUTPUT
