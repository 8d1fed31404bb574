"""Link keys: ZeroMQ CURVE certificates that encrypt the links between stages and admit only known senders.

A deployment has one key folder (`skyfuse keys DIR`) holding two certificates, each a public `NAME.key`
and a secret `NAME.key_secret`:
- `receiver`: the listening side of every link (fuse stage inputs, sink input). A sender only talks to a
  receiver that proves it holds this secret, so frames never go to an impostor ground station.
- `sender`: the connecting side (captures, fuse stage output). A receiver admits only senders whose public
  key is in the folder, so nobody else can inject frames; everything on the wire is encrypted.
A drone that only captures needs `receiver.key`, `sender.key` and `sender.key_secret`; the ground station
needs the whole folder. Start every stage of a deployment with the same `--keys DIR`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from core.errors import SkyfuseError

RECEIVER, SENDER = "receiver", "sender"


@dataclass(frozen=True)
class LinkKeys:
    folder: Path  # also the allow-list: a receiver admits the senders whose NAME.key lies here
    receiver_public: bytes
    receiver_secret: bytes | None  # None where only senders run (a drone)
    sender_public: bytes
    sender_secret: bytes | None

    def require(self, *roles: str) -> LinkKeys:
        """These keys, once checked to hold the secrets that ports of `roles` need."""
        for role in roles:
            self.secret(role)
        return self

    def secret(self, role: str) -> bytes:
        """The secret key a port of `role` needs; SkyfuseError naming the missing file."""
        secret = self.receiver_secret if role == RECEIVER else self.sender_secret
        if secret is None:
            raise SkyfuseError(f"link keys {self.folder}: no {role}.key_secret, which a {role} needs "
                               "(copy it from the folder `skyfuse keys` made)")
        return secret


def create_keys(folder: str | Path) -> Path:
    """Write a new receiver and sender certificate into `folder` (created); refuses to overwrite keys."""
    folder = Path(folder)
    existing = [p.name for p in folder.glob("*.key*")] if folder.is_dir() else []
    if existing:
        raise SkyfuseError(f"{folder} already holds keys ({', '.join(sorted(existing))}); choose an empty "
                           "folder, so that no stage is left with keys that no longer match")
    if not zmq.has("curve"):
        raise SkyfuseError("this libzmq has no CURVE support; encrypted links are not available")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (RECEIVER, SENDER):
        zmq.auth.create_certificates(str(folder), name)
        (folder / f"{name}.key_secret").chmod(0o600)  # readable by its owner only
    return folder


def load_keys(folder: str | Path) -> LinkKeys:
    """The certificates in `folder`; SkyfuseError naming what is missing or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SkyfuseError(f"link keys folder not found: {folder} (make one with `skyfuse keys {folder}`)")
    keys = {}
    for name in (RECEIVER, SENDER):
        secret_file, public_file = folder / f"{name}.key_secret", folder / f"{name}.key"
        path = secret_file if secret_file.is_file() else public_file
        if not path.is_file():
            raise SkyfuseError(f"link keys {folder}: {public_file.name} is missing")
        try:
            keys[name] = zmq.auth.load_certificate(str(path))
        except (OSError, ValueError) as exc:
            raise SkyfuseError(f"link keys {folder}: cannot read {path.name} ({exc})") from None
    (receiver_public, receiver_secret), (sender_public, sender_secret) = keys[RECEIVER], keys[SENDER]
    return LinkKeys(folder, receiver_public, receiver_secret, sender_public, sender_secret)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1", "lo")


def add_keys_argument(parser) -> None:
    parser.add_argument("--keys", metavar="DIR", help="link keys folder from `skyfuse keys`: encrypt this "
                                                      "stage's links and admit only the deployment's senders")
    parser.add_argument("--insecure", action="store_true",
                        help="allow plain tcp links off the loopback address (anyone on the network can then "
                             "read them and inject frames)")


def off_loopback(endpoint: str) -> bool:
    """Whether `endpoint` is a tcp address other machines can reach (ipc and loopback tcp cannot)."""
    scheme, _, address = endpoint.partition("://")
    if scheme != "tcp":
        return False
    host = address.rpartition(":")[0]
    if ";" in host:  # tcp://source;destination: the destination is what is reached
        host = host.partition(";")[2]
    return host not in LOOPBACK_HOSTS and not host.startswith("127.")


def require_secure_links(endpoints: list[str], keys_folder: str | None, insecure: bool) -> None:
    """Refuse plain tcp off the loopback address: a stage that binds or connects where other machines can
    reach it needs link keys, unless the user says --insecure (then it warns)."""
    exposed = [endpoint for endpoint in endpoints if off_loopback(endpoint)]
    if not exposed or keys_folder:
        return
    if not insecure:
        raise SkyfuseError(f"{exposed[0]} is reachable from other machines: give --keys DIR (made by "
                           "`skyfuse keys DIR`) to encrypt and authenticate the link, or --insecure to use "
                           "a plain link anyway")
    print(f"warning: plain tcp link on {', '.join(exposed)} (--insecure): anyone on the network can read it "
          "and inject frames", file=sys.stderr, flush=True)


def link_keys(folder: str | None, *roles: str, endpoints: tuple[str, ...] = (),
              insecure: bool = False) -> LinkKeys | None:
    """The keys in `folder` (checked to hold the secrets of `roles`), or None without a folder; first
    refuses plain tcp `endpoints` off the loopback address unless `insecure` (require_secure_links)."""
    require_secure_links(list(endpoints), folder, insecure)
    return load_keys(folder).require(*roles) if folder else None


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="skyfuse keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="new folder for the deployment's link keys")
    args = parser.parse_args(argv)
    folder = create_keys(args.folder)
    print(f"link keys written to {folder}: start every stage with --keys {folder} "
          f"(a capture-only machine needs {RECEIVER}.key, {SENDER}.key and {SENDER}.key_secret)")
    return 0
