"""ZeroMQ CURVE authentication and encryption for the wire: key files, and the server and client settings.

A key directory (`rtdp serve-env keygen=DIR`) holds ZeroMQ's certificate files (the `zmq.auth` format):

    DIR/server.key          the server's public key: copy it to every client machine
    DIR/server.key_secret   the server's key pair: stays on the robot/simulator PC (mode 0600)
    DIR/NAME.key_secret     a client's key pair (mode 0600): copy it to that client only
    DIR/clients/NAME.key    the public keys of the clients the server lets in (delete one to revoke it)

The server authenticates clients through ZeroMQ's ZAP handler (`zmq.auth.thread.ThreadAuthenticator`,
one per context) against `DIR/clients/`, so only holders of a listed key pair connect at all; everything
on such a connection is encrypted. Off on loopback by default, required on any other address
(see `EnvServer` and `endpoints.is_loopback`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq

SERVER = "server"
CLIENTS_DIR = "clients"


class CurveKeyError(ValueError):
    """A key file or directory that is missing or unreadable; the message names it and what to run."""


def _key(value: str | bytes | Path, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret) from a certificate file path, or (key, None) from a 40-character z85 public key."""
    if isinstance(value, bytes) and len(value) == 40:
        return value, None
    if isinstance(value, str) and len(value) == 40 and not os.path.exists(value):
        return value.encode("ascii"), None
    path = Path(value)
    if not path.is_file():
        raise CurveKeyError(f"{what}: no key file {path} (create keys with `rtdp serve-env keygen=DIR`)")
    import zmq.auth

    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise CurveKeyError(f"{what}: {path} is not a ZeroMQ certificate ({err})") from None


@dataclass(frozen=True)
class ServerKeys:
    """What a CURVE server needs: its key pair and the directory of client public keys it accepts."""

    public: bytes
    secret: bytes
    clients_dir: Path

    @classmethod
    def load(cls, key_dir: str | Path) -> ServerKeys:
        """The server side of a key directory made by `generate`."""
        key_dir = Path(key_dir)
        public, secret = _key(key_dir / f"{SERVER}.key_secret", "server key pair")
        if not secret:
            raise CurveKeyError(f"{key_dir / (SERVER + '.key_secret')} holds no secret key")
        clients = key_dir / CLIENTS_DIR
        if not clients.is_dir() or not any(clients.glob("*.key")):
            raise CurveKeyError(f"{clients}: no client public keys (*.key); add one with "
                            f"`rtdp serve-env keygen={key_dir} key_name=NAME`")
        return cls(public, secret, clients)

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server (before bind)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True


@dataclass(frozen=True)
class ClientKeys:
    """What a CURVE client needs: the server's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_key: str | bytes | Path, client_key: str | Path) -> ClientKeys:
        """From the server's public key (file or z85) and this client's `.key_secret` file."""
        server_public, _ = _key(server_key, "server public key")
        public, secret = _key(client_key, "client key pair")
        if not secret:
            raise CurveKeyError(f"{client_key}: holds no secret key; give the client's NAME.key_secret file")
        return cls(server_public, public, secret)

    @classmethod
    def from_dir(cls, key_dir: str | Path, name: str = "client") -> ClientKeys:
        """The client `name` of a key directory made by `generate` (server.key + NAME.key_secret)."""
        key_dir = Path(key_dir)
        return cls.load(key_dir / f"{SERVER}.key", key_dir / f"{name}.key_secret")

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client of the server (before connect)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public


def generate(key_dir: str | Path, name: str = "client") -> dict[str, Path]:
    """Create the server key pair (if the directory has none) and a key pair for client `name`.

    The client's public key goes into `clients/` (the server accepts it from its next start); secrets
    are written with mode 0600. An existing client of the same name is never overwritten.
    """
    import zmq.auth

    if not name or "/" in name or name in (SERVER, CLIENTS_DIR) or name.startswith("."):
        raise CurveKeyError(f"key_name={name!r}: give a plain name (not {SERVER!r} or {CLIENTS_DIR!r})")
    key_dir = Path(key_dir)
    if (key_dir / f"{name}.key_secret").exists():
        raise CurveKeyError(f"{key_dir / (name + '.key_secret')} already exists: pick another key_name=")
    try:
        (key_dir / CLIENTS_DIR).mkdir(parents=True, exist_ok=True)
        made: dict[str, Path] = {}
        if not (key_dir / f"{SERVER}.key_secret").exists():
            pub, sec = zmq.auth.create_certificates(key_dir, SERVER)
            os.chmod(sec, 0o600)
            made["server_public"], made["server_secret"] = Path(pub), Path(sec)
        pub, sec = zmq.auth.create_certificates(key_dir, name)
        os.chmod(sec, 0o600)
        allowed = key_dir / CLIENTS_DIR / f"{name}.key"
        shutil.move(pub, allowed)  # the client needs only its .key_secret (which holds both halves)
        made["client_secret"], made["client_public"] = Path(sec), allowed
    except OSError as err:
        raise CurveKeyError(f"cannot write keys in {key_dir}: {err.strerror or err}") from None
    return made


def start_authenticator(context: zmq.Context, keys: ServerKeys):
    """A ZAP handler on `context` that lets in only the clients whose public keys are in `keys.clients_dir`."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.clients_dir))
    return auth
