"""Decoding controls shared by the tabs, and the server-side clamp of what a client sends.

The sliders default to the paper's decoding (section IV-C): max_new_tokens 256, temperature 0.5,
top_k 20, top_p 1.0, repetition_penalty 1.2. API clients can send any number, so every value is
clamped to the sliders' ranges on the server before it reaches a model.
"""

from __future__ import annotations

from typing import Any

from ..specs import Decoding, decoding_fields

#: (minimum, maximum, step) per field, and the sliders' labels: from :class:`Decoding`'s own field
#: descriptions, which the CLI flags use too. The UI and the server-side clamp use the same ranges.
RANGES: dict[str, tuple[float, float, float]] = {
    f.name: (*f.metadata["range"], f.metadata["step"]) for f in decoding_fields()
}
FIELDS = tuple(RANGES)
LABELS = {f.name: f.metadata["label"] for f in decoding_fields()}
INTEGER_FIELDS = {f.name for f in decoding_fields() if f.type in (int, "int")}


def clamp_decoding(*values: Any, default: Decoding | None = None) -> Decoding:
    """A :class:`Decoding` from slider values in :data:`FIELDS` order; missing or unreadable
    values fall back to ``default`` (the paper's), the rest are clamped to :data:`RANGES`."""
    base = default or Decoding()
    out: dict[str, Any] = {}
    for name, value in zip(FIELDS, values + (None,) * (len(FIELDS) - len(values))):
        lo, hi, _ = RANGES[name]
        try:
            number = float(value) if value is not None else float(getattr(base, name))
        except (TypeError, ValueError):
            number = float(getattr(base, name))
        number = min(max(number, lo), hi)
        out[name] = int(round(number)) if name in INTEGER_FIELDS else number
    return Decoding(**out)


def decoding_values(decoding: Decoding) -> list[Any]:
    """Slider values for ``decoding``, in :data:`FIELDS` order."""
    return [getattr(decoding, name) for name in FIELDS]


def decoding_sliders(gr: Any, decoding: Decoding | None = None) -> list[Any]:
    """Create one slider per field (inside the caller's layout), set to ``decoding``."""
    decoding = decoding or Decoding()
    sliders = []
    for name in FIELDS:
        lo, hi, step = RANGES[name]
        sliders.append(gr.Slider(lo, hi, value=getattr(decoding, name), step=step, label=LABELS[name]))
    return sliders


def refuse_bad_values(components: Any, what: str) -> None:
    """Make Gradio's own check of a value sent to ``components`` (a choice not offered, a number
    out of a slider's range) a refusal like the app's own: the client gets Gradio's message, the
    log one ``refused <what>: ...`` line instead of a full traceback per bad request. The check
    itself is Gradio's, unchanged: each component's ``preprocess`` is wrapped on the instance."""
    from gradio.exceptions import Error

    from .safety import refuse

    for component in components:
        check = component.preprocess

        def preprocess(payload: Any, _check: Any = check) -> Any:
            try:
                return _check(payload)
            except Error as exc:
                raise refuse(exc.message if hasattr(exc, "message") else exc, what) from None

        component.preprocess = preprocess
