"""The one error type for unusable bundles (its own module so validators share it)."""


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the problem and the fix."""



def excerpt(value, limit: int = 40) -> str:
    """A short printable repr of a value read from an untrusted file, for an error message: an
    error never echoes more of a file than this (a symlinked or crafted file may hold secrets)."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4,300 digits, maybe nested in a list
        return "<a number too long to show>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
