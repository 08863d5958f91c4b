"""Who may do what on NATS: one application account, one user per role and region, subject permissions.

The permissions list what each service really sends and subscribes to (traced on a real nats-server,
checked by ``tests/test_nats_permissions.py`` running the real flows as these users). Prefix ``P`` is
``$JS.API`` and, with a JetStream domain, also ``$JS.<domain>.API`` (what a client on a leaf node uses):

- gateway ``gateway-<r>``: requests on ``mvs.<r>.stylize``, discovery on ``mvs.<r>.workers``, style
  store: bind or create (``P.STREAM.INFO|CREATE.OBJ_mvs-styles``), look up (``P.STREAM.MSG.GET``), write
  (``$O.mvs-styles.C|M.*``); replies on its own inbox prefix ``_INBOX_gateway-<r>.>``.
- worker ``worker-<r>``: ``mvs.<r>.stylize`` only in queue group ``stylizers``, ``mvs.<r>.workers``,
  answers (``allow_responses``, which also covers the flow-control replies of its object reads); reads
  styles through an ordered consumer (``P.STREAM.NAMES``, ``P.CONSUMER.CREATE.OBJ_mvs-styles``); federated
  learning: binds (never creates: ``STREAM.INFO`` and ``STREAM.MSG.GET`` only) the model bucket and the
  latest-version KV and reads both, binds or creates its region's delta bucket and writes only there
  (``$O.mvs-deltas-<r>.C|M.*``), publishes ``mvs.fl.delta.<r>`` into the JetStream stream, follows
  ``mvs.fl.global``. It cannot write ``mvs-models``: global versions are the aggregator's alone.
- aggregator: owns the delta stream (durable pull consumer, acks on ``$JS.ACK.MVS_FL_DELTAS.>``), the
  model bucket, both KV buckets (``$KV.mvs-model-latest.>``, ``$KV.mvs-fl-rounds.>``) and announces on
  ``mvs.fl.global``; reads and deletes the deltas of every region's bucket (the regions it is generated for).
  Reading an object of a few MB (a model version, a delta) needs flow-control replies on
  ``$JS.FC.OBJ_<bucket>.>``: without them the read stalls for good.
- leaf ``leaf-<r>``: a region's leaf node connecting to the hub, bound to the application account.

Every user subscribes to replies on its own inbox prefix only (``_INBOX_<user>.>``, set by
:func:`streaming.nats_connect.connect_nats` from the URL's user): one region's users cannot read another's replies.

The phone never touches NATS. Passwords never appear in a config: each user's password is an
environment variable of the server (:func:`password_env`, e.g. ``MVS_NATS_PASSWORD_WORKER_EU``), set
from a Kubernetes Secret or by :class:`Credentials` for a local run.
"""

from __future__ import annotations

import json
import secrets
import string
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from streaming.nats_connect import inbox_prefix
from streaming.protocol import (
    FL_DELTA_STREAM,
    FL_GLOBAL_SUBJECT,
    FL_ROUND_BUCKET,
    MODEL_BUCKET,
    MODEL_LATEST_BUCKET,
    STYLE_BUCKET,
    STYLIZE_QUEUE_GROUP,
    delta_bucket,
    fl_delta_subject,
    stylize_subject,
    workers_subject,
)

APP_ACCOUNT = "MVS"
"""The one application account: JetStream on the hub, every service user, the leaf links."""
LEAF_URL_ENV = "MVS_NATS_LEAF_URL"
"""Environment variable holding a leaf node's remote URL with its credentials (remotes take no password field)."""
AGGREGATOR_USER = "aggregator"

INDENT = "  "

STYLE_STREAM = f"OBJ_{STYLE_BUCKET}"
MODEL_STREAM = f"OBJ_{MODEL_BUCKET}"
MODEL_LATEST_STREAM = f"KV_{MODEL_LATEST_BUCKET}"
ROUND_STREAM = f"KV_{FL_ROUND_BUCKET}"


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe to (``"subject queue"`` pins a queue group)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May answer requests it received (one reply each), whatever their reply subject."""

    def render(self) -> str:
        """The ``permissions`` block of a user in a server config (JSON, which the config format includes)."""
        block: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            block["allow_responses"] = True
        return json.dumps(block, indent=2)


def api_prefixes(js_domain: str | None) -> tuple[str, ...]:
    """JetStream API prefixes a client may use: the local one, and the domain's when there is one."""
    return ("$JS.API",) if js_domain is None else ("$JS.API", f"$JS.{js_domain}.API")


def inbox(user: str) -> str:
    """A user's reply subjects (requests, JetStream API replies, ordered-consumer deliveries, pull fetches)."""
    return f"{inbox_prefix(user)}.>"


def _api(js_domain: str | None, *calls: str) -> list[str]:
    return [f"{prefix}.{call}" for prefix in api_prefixes(js_domain) for call in dict.fromkeys(calls)]


def _bind(stream: str) -> tuple[str, str, str]:
    """Bind to a bucket or stream, creating it when missing, and read its messages (what every store open does)."""
    return f"STREAM.INFO.{stream}", f"STREAM.CREATE.{stream}", f"STREAM.MSG.GET.{stream}"


def _bind_existing(stream: str) -> tuple[str, str]:
    """Bind to a bucket that must exist, and read its messages (no leave to create it)."""
    return f"STREAM.INFO.{stream}", f"STREAM.MSG.GET.{stream}"


def _objects(bucket: str) -> str:
    """The stream behind an object store bucket."""
    return f"OBJ_{bucket}"


def _read_objects(stream: str) -> tuple[str, str]:
    """Read an object's chunks: nats-py finds the stream by subject and reads with an ordered consumer."""
    return "STREAM.NAMES", f"CONSUMER.CREATE.{stream}"


def _write_objects(bucket: str) -> list[str]:
    return [f"$O.{bucket}.C.*", f"$O.{bucket}.M.*"]


def gateway_permissions(region: str, js_domain: str | None = None) -> Permissions:
    """An edge gateway: stylize requests and discovery in its region, style uploads."""
    return Permissions(
        publish=(
            stylize_subject(region),
            workers_subject(region),
            *_api(js_domain, *_bind(STYLE_STREAM)),
            *_write_objects(STYLE_BUCKET),
        ),
        subscribe=(inbox(gateway_user(region)),),
    )


def worker_permissions(region: str, js_domain: str | None = None) -> Permissions:
    """A stylizer worker: its region's queue group, style reads, and its side of federated learning."""
    return Permissions(
        publish=(
            *_api(
                js_domain,
                *_bind(STYLE_STREAM),
                *_read_objects(STYLE_STREAM),
                *_bind_existing(MODEL_STREAM),
                *_read_objects(MODEL_STREAM),
                *_bind_existing(MODEL_LATEST_STREAM),
                *_bind(_objects(delta_bucket(region))),
            ),
            *_write_objects(delta_bucket(region)),
            fl_delta_subject(region),
        ),
        subscribe=(
            f"{stylize_subject(region)} {STYLIZE_QUEUE_GROUP}",
            workers_subject(region),
            FL_GLOBAL_SUBJECT,
            inbox(worker_user(region)),
        ),
        allow_responses=True,
    )


def aggregator_permissions(regions: Sequence[str], js_domain: str | None = None) -> Permissions:
    """The cloud aggregator: the delta stream's consumer, ``regions``' delta buckets' reader, the model stores'
    writer, the version announcer."""
    delta_streams = [_objects(delta_bucket(region)) for region in regions]
    return Permissions(
        publish=(
            *_api(
                js_domain,
                f"STREAM.INFO.{FL_DELTA_STREAM}",
                f"STREAM.CREATE.{FL_DELTA_STREAM}",
                f"CONSUMER.INFO.{FL_DELTA_STREAM}.>",
                f"CONSUMER.CREATE.{FL_DELTA_STREAM}.>",
                f"CONSUMER.MSG.NEXT.{FL_DELTA_STREAM}.>",
                *_bind(MODEL_STREAM),
                *_read_objects(MODEL_STREAM),
                f"STREAM.PURGE.{MODEL_STREAM}",
                *_bind(MODEL_LATEST_STREAM),
                *_bind(ROUND_STREAM),
                *(call for stream in delta_streams for call in _bind_existing(stream)),
                *(call for stream in delta_streams for call in _read_objects(stream)),
                *(f"STREAM.PURGE.{stream}" for stream in delta_streams),
            ),
            f"$JS.ACK.{FL_DELTA_STREAM}.>",
            f"$JS.FC.{MODEL_STREAM}.>",
            *(f"$JS.FC.{stream}.>" for stream in delta_streams),
            *_write_objects(MODEL_BUCKET),
            *(subject for region in regions for subject in _write_objects(delta_bucket(region))),
            f"$KV.{MODEL_LATEST_BUCKET}.>",
            f"$KV.{FL_ROUND_BUCKET}.>",
            FL_GLOBAL_SUBJECT,
        ),
        subscribe=(inbox(AGGREGATOR_USER),),
    )


def indent(text: str, levels: int) -> str:
    """``text`` with every line indented by ``levels`` steps."""
    return "\n".join(INDENT * levels + line for line in text.splitlines())


PASSWORD_ENV_PREFIX = "MVS_NATS_PASSWORD_"


def password_env(user: str) -> str:
    """Environment variable of a user's password: ``worker-eu`` -> ``MVS_NATS_PASSWORD_WORKER_EU``."""
    return PASSWORD_ENV_PREFIX + user.upper().replace("-", "_")


@dataclass(frozen=True)
class User:
    """A service user of the application account."""

    name: str
    permissions: Permissions

    def render(self) -> str:
        """The user's entry in an account's ``users`` list (password from the environment)."""
        fields = [
            f"user: {json.dumps(self.name)}",
            f"password: ${password_env(self.name)}",
            f"permissions: {self.permissions.render()}",
        ]
        return "{\n" + indent("\n".join(fields), 1) + "\n}"


def gateway_user(region: str) -> str:
    """User name of a region's gateways."""
    return f"gateway-{region}"


def worker_user(region: str) -> str:
    """User name of a region's workers (at the edge or, as overflow, in the cloud)."""
    return f"worker-{region}"


def leaf_user(region: str) -> str:
    """User name of a region's leaf node on the hub."""
    return f"leaf-{region}"


def region_users(region: str, js_domain: str | None) -> list[User]:
    """The users of one region: its gateways and its workers."""
    return [
        User(gateway_user(region), gateway_permissions(region, js_domain)),
        User(worker_user(region), worker_permissions(region, js_domain)),
    ]


@dataclass(frozen=True)
class ServerAuth:
    """Accounts, users and (on a hub) leaf-node users of one server."""

    users: tuple[User, ...]
    leaf_users: tuple[str, ...] = ()
    """Leaf nodes this server accepts (a hub), each bound to the application account."""

    @classmethod
    def hub(cls, regions: Sequence[str], leaf_regions: Sequence[str], js_domain: str | None) -> ServerAuth:
        """The hub knows every user: the aggregator, every region's (cloud workers serve overflow) and the
        leaf nodes of ``leaf_regions``."""
        users = [User(AGGREGATOR_USER, aggregator_permissions(regions, js_domain))]
        users += [user for region in regions for user in region_users(region, js_domain)]
        return cls(tuple(users), tuple(leaf_user(region) for region in leaf_regions))

    @classmethod
    def leaf(cls, region: str, js_domain: str | None) -> ServerAuth:
        """A region's leaf node knows that region's users only."""
        return cls(tuple(region_users(region, js_domain)))

    def user_names(self) -> list[str]:
        """Every user this server authenticates, leaf links included."""
        return [user.name for user in self.users] + list(self.leaf_users)

    def accounts(self, jetstream: bool) -> str:
        """The ``accounts`` block."""
        users = "\n".join(indent(user.render(), 3) for user in self.users)
        js = f"{INDENT * 2}jetstream: enabled\n" if jetstream else ""
        return (
            f"accounts {{\n{INDENT}{APP_ACCOUNT} {{\n{js}{INDENT * 2}users: [\n{users}\n{INDENT * 2}]\n{INDENT}}}\n}}"
        )

    def leaf_authorization(self) -> str:
        """The ``authorization`` block of the hub's leafnodes section (each leaf bound to the application account)."""
        account = json.dumps(APP_ACCOUNT)
        users = "\n".join(
            f"{INDENT * 2}{{ user: {json.dumps(name)}, password: ${password_env(name)}, account: {account} }}"
            for name in self.leaf_users
        )
        return f"authorization {{\n{INDENT}users: [\n{users}\n{INDENT}]\n}}"


PASSWORD_CHARS = 24


def new_password() -> str:
    """A random password that nats-server reads back as a string from the environment.

    The server parses an environment variable like a config value: ``7o...`` fails as a number, so a
    password starts with a letter and uses letters and digits only.
    """
    alnum = string.ascii_letters + string.digits
    return secrets.choice(string.ascii_letters) + "".join(secrets.choice(alnum) for _ in range(PASSWORD_CHARS - 1))


def with_credentials(url: str, user: str, password: str) -> str:
    """``nats://host:port`` -> ``nats://user:password@host:port``."""
    parts = urllib.parse.urlsplit(url)
    userinfo = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.hostname}:{parts.port}"))


@dataclass
class Credentials:
    """Passwords of a local run, by user name (a real deployment keeps them in a Secret)."""

    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls, users: Iterable[str]) -> Credentials:
        """A fresh random password per user."""
        return cls({user: new_password() for user in users})

    def env(self, users: Iterable[str] | None = None) -> dict[str, str]:
        """Environment variables a server's config reads the passwords of ``users`` (default: all) from: give each
        server only the users it authenticates (:meth:`ServerAuth.user_names`)."""
        wanted = self.passwords if users is None else {user: self.passwords[user] for user in users}
        return {password_env(user): password for user, password in wanted.items()}

    def url(self, url: str, user: str) -> str:
        """``url`` with ``user``'s credentials."""
        return with_credentials(url, user, self.passwords[user])
