"""Mail passwords from the environment (``BULLETIN_SMTP_PASSWORD``, ``BULLETIN_IMAP_PASSWORD``)
or from a Prefect Secret block whose name is in the environment (``BULLETIN_SMTP_PASSWORD_BLOCK``,
``BULLETIN_IMAP_PASSWORD_BLOCK``): never from a file of the repository or the config folder."""

from __future__ import annotations

from pydantic import SecretStr

from tasks.core.settings import ImapSettings, SmtpSettings
from tasks.mail.mailer import MailError


class SecretError(MailError):
    """A password setting that cannot be used (both kinds set, or the block not found): the
    server cannot be logged into, as with a wrong password."""

    def __init__(self, message: str) -> None:
        super().__init__(message, unreachable=True)


def read_secret_block(name: str, what: str) -> str:
    """The value of the Prefect Secret block *name* (on the Prefect server this step uses)."""
    from prefect.blocks.system import Secret
    try:
        value = Secret.load(name).get()
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        raise SecretError(f"找不到 Prefect Secret 块“{name}”（{what}）：请在 Prefect 界面的 Blocks 中新建，"
                          f"或用 prefect block create secret。No Secret block named {name!r}: {exc}") from None
    if not isinstance(value, str) or not value:
        raise SecretError(f"Prefect Secret 块“{name}”（{what}）的值不是非空字符串。Secret block {name!r} holds no text.")
    return value


def _with_password(settings, prefix: str):
    if not settings.password_block:
        return settings
    if settings.password is not None:
        raise SecretError(f"{prefix}PASSWORD 和 {prefix}PASSWORD_BLOCK 只能设置一个。Set one of them, not both.")
    password = read_secret_block(settings.password_block, f"{prefix}PASSWORD_BLOCK")
    return settings.model_copy(update={"password": SecretStr(password)})


def smtp_settings() -> SmtpSettings:
    """``BULLETIN_SMTP_*``, the password read from its Secret block when one is named."""
    return _with_password(SmtpSettings(), "BULLETIN_SMTP_")


def imap_settings() -> ImapSettings:
    """``BULLETIN_IMAP_*``, the password read from its Secret block when one is named."""
    return _with_password(ImapSettings(), "BULLETIN_IMAP_")
