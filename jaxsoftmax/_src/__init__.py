"""The library's private modules. Names inside are public (no leading underscore), so siblings
import them from each other; users import from ``jaxsoftmax`` and its public submodules."""
