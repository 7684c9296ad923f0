"""The one error type for unusable bundles (its own module so validators share it)."""


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the problem and the fix."""
