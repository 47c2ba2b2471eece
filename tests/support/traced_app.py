"""The social example and the transfer workflow, their spans written to `MEMOIR_TEST_SPAN_FILE`
(support/span_file.py), for `memoir run tests.support.traced_app:app` in the tracing tests."""

from __future__ import annotations

from entities.bank import Account, Transfer
from entities.social import CountPosts, Post, PostsByAuthor, Profile
from runtime import App

from .span_file import install_from_env

install_from_env()

app = App("traced", entities=[Post, Profile, Account, Transfer], views=[PostsByAuthor], consumers=[CountPosts])
