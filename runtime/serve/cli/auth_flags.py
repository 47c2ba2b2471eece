"""The command line's NATS credential and TLS flags, shared by `memoir run` and every client command.

No flag takes a password or token itself (its value would show in `ps`): they are read from files,
or from `MEMOIR_NATS_PASSWORD` / `MEMOIR_NATS_TOKEN`.
"""

from __future__ import annotations

import argparse

from ...wire.auth import NatsAuth

__all__ = ["FLAGS", "NatsAuth", "add_flags", "from_args"]

# flag -> (NatsAuth.from_env field, metavar, help)
FLAGS = {
    "--nats-user": ("user", "USER", "NATS user (its password: --nats-password-file or MEMOIR_NATS_PASSWORD)"),
    "--nats-password-file": ("password_file", "FILE", "file holding the NATS user's password"),
    "--nats-token-file": ("token_file", "FILE", "file holding a NATS token (or MEMOIR_NATS_TOKEN)"),
    "--nats-nkey": ("nkey_file", "FILE", "NATS user nkey seed file"),
    "--nats-creds": ("creds_file", "FILE", "NATS .creds file (user JWT and seed)"),
    "--nats-ca": ("tls_ca", "PEM", "CA certificate(s) that signed the NATS server's"),
    "--nats-cert": ("tls_cert", "PEM", "TLS client certificate for NATS"),
    "--nats-key": ("tls_key", "PEM", "its private key"),
    "--nats-server-name": (
        "tls_server_name",
        "NAME",
        "the name on the server's certificate, if not the URL's host",
    ),
    "--nats-inbox-prefix": ("inbox_prefix", "PREFIX", "subject prefix of this connection's reply inboxes (_INBOX)"),
}


def add_flags(group: argparse._ArgumentGroup) -> None:
    """The flags; each is also a MEMOIR_NATS_* variable (see `runtime.wire.auth.ENV`)."""
    for flag, (dest, metavar, text) in FLAGS.items():
        group.add_argument(flag, dest=f"auth_{dest}", metavar=metavar, help=text)


def from_args(args: argparse.Namespace) -> NatsAuth:
    """Flags over MEMOIR_NATS_* variables: how to reach an external NATS (and a nats:// journal)."""
    return NatsAuth.from_env(**{dest: getattr(args, f"auth_{dest}", None) for dest, _, _ in FLAGS.values()})
