"""Built-in prompt templates: the paper's chat and doctor templates."""

from vichat.data.templates import CHAT, DOCTOR
from vichat.plugin import hookimpl


@hookimpl
def register_templates(register):
    register(CHAT)
    register(DOCTOR)
