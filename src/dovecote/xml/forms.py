"""XEP-0004: Data Forms — parse submitted forms, build forms and results.

A module reads a submission with `submitted_values(x, FORM_TYPE)` ({var: [values]}, the
hidden FORM_TYPE checked and left out) and builds what it sends with `Form(...)` /
`Field(...)`. Malformed input raises `FormError`, which the caller answers with
bad-request (RFC 6120 §8.3.3.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dovecote.xml.element import Element

DATA_FORMS = "jabber:x:data"
#: XEP-0122: Data Forms Validation (e.g. the open list of the MAM 'ids' field).
XDATA_VALIDATE = "http://jabber.org/protocol/xdata-validate"

#: XEP-0004 §3.1: the 'type' of the <x/> element.
FORM_TYPES = frozenset(("form", "submit", "cancel", "result"))
#: XEP-0004 §3.3.
FIELD_TYPES = frozenset(
    (
        "boolean",
        "fixed",
        "hidden",
        "jid-multi",
        "jid-single",
        "list-multi",
        "list-single",
        "text-multi",
        "text-private",
        "text-single",
    )
)


class FormError(ValueError):
    """A malformed or unexpected data form; answer with bad-request."""


@dataclass(slots=True)
class Field:
    """One <field/> (XEP-0004 §3.2). `extra` holds foreign children such as a XEP-0122
    <validate/> element."""

    var: str | None
    type: str | None = None
    values: list[str] = field(default_factory=list)
    label: str | None = None
    desc: str | None = None
    required: bool = False
    #: (label, value) pairs of list-single / list-multi fields.
    options: list[tuple[str | None, str]] = field(default_factory=list)
    extra: list[Element] = field(default_factory=list)

    def to_element(self) -> Element:
        attrs: dict[str, str] = {}
        if self.var is not None:
            attrs["var"] = self.var
        if self.type is not None:
            attrs["type"] = self.type
        if self.label is not None:
            attrs["label"] = self.label
        el = Element("field", DATA_FORMS, attrs)
        if self.desc:
            el.add("desc", text=self.desc)
        if self.required:
            el.add("required")
        for value in self.values:
            el.add("value", text=value)
        for label, value in self.options:
            option = el.add("option", attrs={"label": label} if label is not None else None)
            option.add("value", text=value)
        for child in self.extra:
            el.append(child.copy())
        return el


@dataclass(slots=True)
class Form:
    """A data form (XEP-0004 §3): its type, fields, title and instructions."""

    type: str = "form"
    fields: list[Field] = field(default_factory=list)
    title: str | None = None
    instructions: list[str] = field(default_factory=list)

    @classmethod
    def with_type(cls, form_type: str, fields: list[Field], type: str = "form") -> Form:
        """A form whose first field is the hidden FORM_TYPE (XEP-0068)."""
        return cls(type, [Field("FORM_TYPE", "hidden", [form_type]), *fields])

    @property
    def form_type(self) -> str | None:
        """The value of the FORM_TYPE field (XEP-0068), if any."""
        for f in self.fields:
            if f.var == "FORM_TYPE":
                return f.values[0] if f.values else None
        return None

    def get(self, var: str) -> Field | None:
        return next((f for f in self.fields if f.var == var), None)

    def values(self) -> dict[str, list[str]]:
        """{var: [values]} of every field with a 'var', in document order."""
        return {f.var: list(f.values) for f in self.fields if f.var is not None}

    def to_element(self) -> Element:
        x = Element("x", DATA_FORMS, {"type": self.type})
        if self.title is not None:
            x.add("title", text=self.title)
        for line in self.instructions:
            x.add("instructions", text=line)
        for f in self.fields:
            x.append(f.to_element())
        return x


def find_form(parent: Element, form_type: str | None = None) -> Element | None:
    """The first <x xmlns='jabber:x:data'/> child of `parent` (with that FORM_TYPE when
    given)."""
    for x in parent.find_all("x", DATA_FORMS):
        if form_type is None or parse_form(x).form_type == form_type:
            return x
    return None


def parse_form(x: Element) -> Form:
    """Read a <x xmlns='jabber:x:data'/> element; raises FormError when it breaks the
    rules of XEP-0004 §3 (a 'type', a 'var' on every non-fixed field, unique vars)."""
    if x.tag != "x" or x.ns != DATA_FORMS:
        raise FormError("not a data form")
    form_type = x.get("type")
    if form_type not in FORM_TYPES:
        raise FormError(f"invalid data form type {form_type!r}")
    form = Form(form_type, title=x.find_text("title", DATA_FORMS))
    form.instructions = [i.text for i in x.find_all("instructions", DATA_FORMS)]
    seen: set[str] = set()
    for el in x.find_all("field", DATA_FORMS):
        var = el.get("var")
        field_type = el.get("type")
        if var is None and field_type != "fixed":
            raise FormError("a data form field needs a 'var'")
        if var is not None:
            if var in seen:
                raise FormError(f"field {var!r} appears twice")
            seen.add(var)
        form.fields.append(
            Field(
                var,
                field_type,
                [v.text for v in el.find_all("value", DATA_FORMS)],
                label=el.get("label"),
                desc=el.find_text("desc", DATA_FORMS),
                required=el.find("required", DATA_FORMS) is not None,
                options=[
                    (o.get("label"), o.find_text("value", DATA_FORMS) or "")
                    for o in el.find_all("option", DATA_FORMS)
                ],
                extra=[c for c in el.elements if c.ns != DATA_FORMS],
            )
        )
    return form


def submitted_values(x: Element, form_type: str | None = None) -> dict[str, list[str]]:
    """The values of a submitted form, {var: [values]}, without FORM_TYPE.

    A form of type 'cancel' or 'result' is not a submission; with `form_type`, a FORM_TYPE
    that says otherwise is refused (a form without one is taken as meant for us)."""
    form = parse_form(x)
    if form.type not in ("submit", "form"):
        raise FormError(f"expected a submitted form, not type {form.type!r}")
    if form_type is not None:
        submitted_type = form.form_type
        if submitted_type is not None and submitted_type != form_type:
            raise FormError(f"unexpected FORM_TYPE {submitted_type!r}, expected {form_type!r}")
    values = form.values()
    values.pop("FORM_TYPE", None)
    return values


def single_value(values: dict[str, list[str]], var: str) -> str | None:
    """The one value of a single-valued field (None when absent or empty)."""
    found = values.get(var)
    if not found:
        return None
    if len(found) > 1:
        raise FormError(f"field {var!r} takes a single value")
    return found[0]


def parse_boolean(text: str) -> bool:
    """XEP-0004 §3.3 boolean: '1'/'true' or '0'/'false'."""
    value = text.strip()
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise FormError(f"invalid boolean {text!r}")
