"""Who may do what on NATS: an account per region, the cloud's application account, a user per service and per
worker, subject permissions.

**Accounts.** A region's services (its gateways and each of its workers) live in the region's own account
``MVS-<r>`` (:func:`region_account`); the cloud's in the application account ``MVS`` (JetStream: every bucket and
stream; the aggregator and the operator's setup user). A subject names something inside one account only, so
nothing of region ``us`` (``mvs.us.stylize``, its replies) exists in region ``eu``'s account: whatever an ``eu``
credential sends, and wherever it asks a reply to go (NATS cannot restrict the reply subject of a request, and
JetStream answers there), it stays inside ``eu``. ``MVS`` exports, and each region account imports, exactly:

- direct gets (``$JS.API.DIRECT.GET.<stream>``) of the style bucket, the model bucket and the latest-version KV,
  under the hub domain's name too (``$JS.hub.API...``, what a client on a leaf node uses): reads answered to the
  requester, never a consumer whose delivery subject the reader chooses (the JetStream API proper is not imported);
- publishes into the style bucket (``$O.<bucket>.C|M.*``) and into its own delta bucket under a worker's token
  (``$O.<bucket>.C|M.*.*``: :func:`streaming.buckets.owned_subjects`), each acked by the stream;
- its own delta references ``mvs.fl.delta.<r>.*`` (into the stream ``MVS_FL_DELTAS``);
- the stream of version announcements ``mvs.fl.global`` (one way: a region cannot publish into it).

Nobody but the setup user (``mvs setup``: :func:`streaming.buckets.create_stores`) and the aggregator (its own
stores) may create a stream; no region user may create a consumer.

**Users** (permissions within their account; prefix ``P`` is ``$JS.API`` and, with a JetStream domain, also
``$JS.<domain>.API``):

- gateway ``gateway-<r>``: requests on ``mvs.<r>.stylize``, discovery on ``mvs.<r>.workers``, style reads
  (``P.DIRECT.GET.OBJ_mvs-styles``) and writes (``$O.mvs-styles.C|M.*``); replies on ``_INBOX_gateway-<r>.>``.
- worker ``worker-<id>`` (:func:`worker_user`, one per worker id: :func:`worker_id`): ``mvs.<r>.stylize`` only in
  queue group ``stylizers``, ``mvs.<r>.workers``, answers (``allow_responses``); direct gets of styles, models and
  the latest-version KV; writes only its own objects of its region's delta bucket (``$O.<bucket>.C|M.<id>.*``: no
  other worker's blob, whatever its name) and publishes delta references only on ``mvs.fl.delta.<r>.<id>``: the
  subject attests the worker id, so one credential is one worker.
- aggregator (``MVS``): owns the delta stream (durable pull consumer, acks), the model bucket, both KV buckets and
  announces on ``mvs.fl.global``; reads and deletes the deltas of every region's bucket.
- setup (``MVS``): creates the deployment's buckets and streams (:func:`streaming.buckets.deployment_stores`).
- leaf ``leaf-<r>``: a region's leaf node connecting to the hub, bound to the region's account.

Every user subscribes to replies on its own inbox prefix only (``_INBOX_<user>.>``, set by
:func:`streaming.nats_connect.connect_nats` from the URL's user).

The phone never touches NATS. Passwords never appear in a config: each user's password is an
environment variable of the server (:func:`password_env`, e.g. ``MVS_NATS_PASSWORD_WORKER_EU_WORKER_0``), set
from a Kubernetes Secret or by :class:`Credentials` for a local run.
"""

from __future__ import annotations

import json
import secrets
import string
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streaming.buckets import (
    MODEL_LATEST,
    MODELS,
    ROUNDS,
    STYLES,
    deployment_stores,
    owned_subjects,
    stream_name,
)
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
    fl_region_delta_subjects,
    stylize_subject,
    token,
    workers_subject,
)

APP_ACCOUNT = "MVS"
"""The cloud's account: JetStream on the hub, the aggregator, the setup user; it exports to the region accounts."""
LEAF_URL_ENV = "MVS_NATS_LEAF_URL"
ROUTE_USER = "route"
"""The user hub servers' routes authenticate as (the cluster's ``authorization``; never a client)."""
ROUTE_URL_ENV = "MVS_NATS_ROUTE"
"""Prefix of the variables holding the hub servers' route URLs, each with the route user's password."""
"""Environment variable holding a leaf node's remote URL with its credentials (remotes take no password field)."""
AGGREGATOR_USER = "aggregator"
SETUP_USER = "setup"
"""The operator's setup (``mvs setup``): creates every bucket and stream, nothing else."""

INDENT = "  "
JS_API = "$JS.API"

STYLE_STREAM = stream_name(STYLES)
MODEL_STREAM = stream_name(MODELS)
MODEL_LATEST_STREAM = stream_name(MODEL_LATEST)
ROUND_STREAM = stream_name(ROUNDS)


def region_account(region: str) -> str:
    """The account of a region's services."""
    return f"{APP_ACCOUNT}-{token(region)}"


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
    return (JS_API,) if js_domain is None else (JS_API, f"$JS.{js_domain}.API")


def inbox(user: str) -> str:
    """A user's reply subjects (requests, JetStream API replies, acks of its publishes)."""
    return f"{inbox_prefix(user)}.>"


def _api(js_domain: str | None, *calls: str) -> list[str]:
    return [f"{prefix}.{call}" for prefix in api_prefixes(js_domain) for call in dict.fromkeys(calls)]


def _bind(stream: str) -> tuple[str, str, str, str]:
    """Bind to a stream, creating (or updating: :func:`streaming.buckets.create_stores`) it, and read its messages
    (the aggregator's own stores)."""
    return f"STREAM.INFO.{stream}", f"STREAM.CREATE.{stream}", f"STREAM.UPDATE.{stream}", f"STREAM.MSG.GET.{stream}"


def _direct_get(stream: str) -> tuple[str, str]:
    """Read a stream's messages by direct get: by sequence or subject in the body, or the last on a subject named
    in the request subject."""
    return f"DIRECT.GET.{stream}", f"DIRECT.GET.{stream}.>"


def _objects(bucket: str) -> str:
    """The stream behind an object store bucket."""
    return f"OBJ_{bucket}"


def _write_objects(bucket: str) -> list[str]:
    return [f"$O.{bucket}.C.*", f"$O.{bucket}.M.*"]


def region_imports(region: str) -> tuple[list[str], list[str]]:
    """What region ``region``'s account takes from the application account: (JetStream API calls, other subjects).
    API calls are named without their prefix (:func:`api_prefixes`)."""
    api = [call for stream in (STYLE_STREAM, MODEL_STREAM, MODEL_LATEST_STREAM) for call in _direct_get(stream)]
    subjects = [
        *_write_objects(STYLE_BUCKET),
        *owned_subjects(delta_bucket(region)),
        fl_region_delta_subjects(region),
    ]
    return api, subjects


def gateway_permissions(region: str, js_domain: str | None = None) -> Permissions:
    """An edge gateway: stylize requests and discovery in its region, style uploads."""
    return Permissions(
        publish=(
            stylize_subject(region),
            workers_subject(region),
            *_api(js_domain, *_direct_get(STYLE_STREAM)),
            *_write_objects(STYLE_BUCKET),
        ),
        subscribe=(inbox(gateway_user(region)),),
    )


def worker_permissions(region: str, worker: str, js_domain: str | None = None) -> Permissions:
    """Stylizer worker ``worker`` (its id): its region's queue group, style reads, and its side of federated
    learning (its own delta subject)."""
    return Permissions(
        publish=(
            *_api(js_domain, *_direct_get(STYLE_STREAM), *_direct_get(MODEL_STREAM), *_direct_get(MODEL_LATEST_STREAM)),
            *owned_subjects(delta_bucket(region), token(worker)),
            fl_delta_subject(region, worker),
        ),
        subscribe=(
            f"{stylize_subject(region)} {STYLIZE_QUEUE_GROUP}",
            workers_subject(region),
            FL_GLOBAL_SUBJECT,
            inbox(worker_user(worker)),
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
                *_bind(FL_DELTA_STREAM),
                f"CONSUMER.INFO.{FL_DELTA_STREAM}.>",
                f"CONSUMER.CREATE.{FL_DELTA_STREAM}.>",
                f"CONSUMER.MSG.NEXT.{FL_DELTA_STREAM}.>",
                *_bind(MODEL_STREAM),
                *_direct_get(MODEL_STREAM),
                f"STREAM.PURGE.{MODEL_STREAM}",
                *_bind(MODEL_LATEST_STREAM),
                *_direct_get(MODEL_LATEST_STREAM),
                *_bind(ROUND_STREAM),
                *(call for stream in delta_streams for call in _direct_get(stream)),
                *(f"STREAM.MSG.GET.{stream}" for stream in delta_streams),  # reads through the leader
                *(f"STREAM.PURGE.{stream}" for stream in delta_streams),
            ),
            f"$JS.ACK.{FL_DELTA_STREAM}.>",
            *_write_objects(MODEL_BUCKET),
            *(subject for region in regions for subject in owned_subjects(delta_bucket(region))),
            f"$KV.{MODEL_LATEST_BUCKET}.>",
            f"$KV.{FL_ROUND_BUCKET}.>",
            FL_GLOBAL_SUBJECT,
        ),
        subscribe=(inbox(AGGREGATOR_USER),),
    )


def setup_permissions(regions: Sequence[str], js_domain: str | None = None) -> Permissions:
    """The operator's setup: look up, create and update the deployment's buckets and streams, nothing else."""
    streams = [stream_name(store) for store in deployment_stores(regions)]
    calls = [call for stream in streams for call in (f"STREAM.{op}.{stream}" for op in ("INFO", "CREATE", "UPDATE"))]
    return Permissions(publish=tuple(_api(js_domain, *calls)), subscribe=(inbox(SETUP_USER),))


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


def worker_id(region: str, index: int) -> str:
    """Id of a region's ``index``-th worker in a generated deployment (``mvs local``, the cluster)."""
    return f"{region}-worker-{index}"


def worker_ids(region: str, count: int) -> tuple[str, ...]:
    """Ids of a region's ``count`` workers."""
    return tuple(worker_id(region, index) for index in range(count))


def worker_user(worker: str) -> str:
    """User name of the worker with id ``worker``: a user per worker, each allowed its own delta subject only."""
    return f"worker-{token(worker)}"


def leaf_user(region: str) -> str:
    """User name of a region's leaf node on the hub."""
    return f"leaf-{region}"


def region_users(region: str, workers: Sequence[str], js_domain: str | None) -> list[User]:
    """The users of one region: its gateways and each of its ``workers`` (their ids)."""
    return [
        User(gateway_user(region), gateway_permissions(region, js_domain)),
        *(User(worker_user(worker), worker_permissions(region, worker, js_domain)) for worker in workers),
    ]


@dataclass(frozen=True)
class Account:
    """An account of a server: its users, and what it exports to or imports from other accounts."""

    name: str
    users: tuple[User, ...]
    jetstream: bool = False
    exports: tuple[dict[str, object], ...] = ()
    imports: tuple[dict[str, object], ...] = ()

    def render(self) -> str:
        """The account's entry in the ``accounts`` block."""
        users = "\n".join(indent(user.render(), 2) for user in self.users)
        lines = ["jetstream: enabled"] if self.jetstream else []
        lines.append(f"users: [\n{users}\n]")
        for key, entries in (("exports", self.exports), ("imports", self.imports)):
            if entries:
                lines.append(f"{key}: [\n" + "\n".join(INDENT + json.dumps(e) for e in entries) + "\n]")
        return f"{json.dumps(self.name)} {{\n" + indent("\n".join(lines), 1) + "\n}"


def app_account(regions: Mapping[str, Sequence[str]], js_domain: str | None, jetstream: bool) -> Account:
    """The cloud's account (aggregator, setup) exporting to the accounts of ``regions`` what they may use."""
    names = list(regions)
    users = (
        User(AGGREGATOR_USER, aggregator_permissions(names, js_domain)),
        User(SETUP_USER, setup_permissions(names, js_domain)),
    )
    exports: dict[str, list[str]] = {}
    for region in names:
        api, subjects = region_imports(region)
        for subject in [f"{JS_API}.{call}" for call in api] + subjects:
            exports.setdefault(subject, []).append(region_account(region))
    services: list[dict[str, object]] = [{"service": subject, "accounts": to} for subject, to in exports.items()]
    announcements: dict[str, object] = {"stream": FL_GLOBAL_SUBJECT, "accounts": [region_account(r) for r in names]}
    return Account(APP_ACCOUNT, users, jetstream, (*services, announcements) if names else ())


def hub_region_account(region: str, workers: Sequence[str], js_domain: str | None) -> Account:
    """A region's account on the hub: its users, and its imports from the application account (each API call under
    every prefix of :func:`api_prefixes`)."""
    api, subjects = region_imports(region)
    imports: list[dict[str, object]] = []
    for call in api:
        for prefix in api_prefixes(js_domain):
            entry: dict[str, object] = {"service": {"account": APP_ACCOUNT, "subject": f"{JS_API}.{call}"}}
            if prefix != JS_API:
                entry["to"] = f"{prefix}.{call}"
            imports.append(entry)
    imports += [{"service": {"account": APP_ACCOUNT, "subject": subject}} for subject in subjects]
    imports.append({"stream": {"account": APP_ACCOUNT, "subject": FL_GLOBAL_SUBJECT}})
    return Account(region_account(region), tuple(region_users(region, workers, js_domain)), imports=tuple(imports))


@dataclass(frozen=True)
class ServerAuth:
    """Accounts, users and leaf-node links of one server."""

    accounts: tuple[Account, ...]
    leaf_users: tuple[tuple[str, str], ...] = ()
    """Leaf nodes this server accepts (a hub): (user, the account it binds)."""
    remote_account: str | None = None
    """A leaf node: the local account its link to the hub binds (the hub binds the same region's account)."""

    @classmethod
    def hub(
        cls, regions: Mapping[str, Sequence[str]], leaf_regions: Sequence[str], js_domain: str | None
    ) -> ServerAuth:
        """The hub knows every account and user: the application account's, every region's (``regions``: each
        region's worker ids; cloud workers serve overflow) and the leaf nodes of ``leaf_regions``."""
        accounts = [app_account(regions, js_domain, jetstream=True)]
        accounts += [hub_region_account(region, workers, js_domain) for region, workers in regions.items()]
        leaves = tuple((leaf_user(region), region_account(region)) for region in leaf_regions)
        return cls(tuple(accounts), leaves)

    @classmethod
    def leaf(cls, region: str, workers: Sequence[str], js_domain: str | None) -> ServerAuth:
        """A region's leaf node knows that region's account and users only."""
        account = Account(region_account(region), tuple(region_users(region, workers, js_domain)))
        return cls((account,), remote_account=account.name)

    @property
    def users(self) -> tuple[User, ...]:
        """Every service user of every account."""
        return tuple(user for account in self.accounts for user in account.users)

    def user_names(self) -> list[str]:
        """Every user this server authenticates, leaf links included."""
        return [user.name for user in self.users] + [user for user, _ in self.leaf_users]

    def render_accounts(self) -> str:
        """The ``accounts`` block."""
        return "accounts {\n" + "\n".join(indent(account.render(), 1) for account in self.accounts) + "\n}"

    def leaf_authorization(self) -> str:
        """The ``authorization`` block of the hub's leafnodes section (each leaf bound to its region's account)."""
        users = "\n".join(
            f"{INDENT * 2}{{ user: {json.dumps(name)}, password: ${password_env(name)}, "
            f"account: {json.dumps(account)} }}"
            for name, account in self.leaf_users
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
