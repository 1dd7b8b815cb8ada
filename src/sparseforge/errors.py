"""The library's exception types: one family, so the CLI can print any of them in one line."""

from __future__ import annotations


class SparseforgeError(Exception):
    """Base class of every error sparseforge raises on purpose."""


class RecipeError(SparseforgeError, ValueError):
    """A recipe problem, located by file, line, modifier and field wherever they are known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        modifier: str | None = None,
        field: str | None = None,
    ):
        self.message = message
        self.file = file
        self.line = line
        self.modifier = modifier
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "")
        elif self.line:
            where = f"line {self.line}"
        what = ", ".join(
            part
            for part in (
                self.modifier and f"modifier {self.modifier}",
                self.field and f"field '{self.field}'",
            )
            if part
        )
        prefix = ": ".join(p for p in (where, what) if p)
        return f"{prefix}: {self.message}" if prefix else self.message

    def located(self, *, file: str | None = None, line: int | None = None) -> RecipeError:
        """Return the same error with file/line filled in where they were missing."""
        return RecipeError(
            self.message,
            file=self.file or file,
            line=self.line or line,
            modifier=self.modifier,
            field=self.field,
        )


class ModelMatchError(SparseforgeError, ValueError):
    """A recipe does not fit the model it is applied to (e.g. a `params` pattern matches nothing)."""


class DataError(SparseforgeError, ValueError):
    """Training or evaluation data cannot be read or does not have the expected columns."""


class ExportError(SparseforgeError, RuntimeError):
    """ONNX export failed or the exported model does not match PyTorch within tolerance."""


class ZooError(SparseforgeError, LookupError):
    """A zoo: stub is malformed, unknown, or does not hold what was asked for (a model or a recipe)."""
