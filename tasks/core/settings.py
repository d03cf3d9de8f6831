"""Settings from the environment (never from committed files): mail out, mail in, ledger URL."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class SmtpSettings(BaseSettings):
    """``BULLETIN_SMTP_*`` and ``BULLETIN_MAIL_FROM``; no host means the file outbox."""

    model_config = SettingsConfigDict(env_prefix="BULLETIN_SMTP_", extra="ignore")
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: SecretStr | None = None
    password_block: str | None = None  # the name of a Prefect Secret block holding the password
    security: Literal["ssl", "starttls", "none"] = "starttls"
    rate: float | None = None  # messages per minute; None = as fast as the server takes them

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return {"ssl": 465, "starttls": 587, "none": 25}[self.security]


class ImapSettings(BaseSettings):
    """``BULLETIN_IMAP_*``; ``collect`` reads the mailbox only when a host is set."""

    model_config = SettingsConfigDict(env_prefix="BULLETIN_IMAP_", extra="ignore")
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: SecretStr | None = None
    password_block: str | None = None  # the name of a Prefect Secret block holding the password
    security: Literal["ssl", "starttls", "none"] = "ssl"
    folder: str = "INBOX"
    done_folder: str = "Processed"


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BULLETIN_", extra="ignore")
    mail_from: str = "bulletin@example.com"
    mail_from_name: str = "报送任务系统"
    db_url: str | None = None
    # a local Maildir (new/, cur/) that collect takes in like the IMAP folder, e.g. where the
    # office's mail server delivers the system's mail; BULLETIN_MAILDIR=/var/mail/bulletin
    maildir: str | None = None
    # seconds before each retry of a batch of messages of which some failed for a reason that
    # may pass (server down, 4xx); BULLETIN_SEND_RETRY_DELAYS='[10, 60]'
    send_retry_delays: list[float] = [10, 60]
    # a Dask scheduler that reads the returns of large runs (flows/dask_parsing.py), e.g.
    # BULLETIN_DASK_ADDRESS=tcp://10.0.0.5:8786; unset, forked processes on this machine do
    dask_address: str | None = None
    dask_chunk: int = 500  # returns per Dask task
