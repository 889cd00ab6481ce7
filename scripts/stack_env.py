"""Write .env for `docker compose` from .env.example, with a random value for each secret.

  python3 scripts/stack_env.py [--env .env] [--example .env.example]   # `make stack-env`

Every secret that .env.example leaves empty gets 32 URL-safe random characters (they become
part of database URLs, so nothing needs escaping); every other line is copied as it is. An
existing .env is never overwritten: its secrets are what the stack's volumes were made with.
The file is written owner-only (mode 600) and appears whole or not at all.
"""

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

SECRETS = (
    "POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD", "MINIO_ROOT_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET", "PREFECT_AUTH_STRING", "MLFLOW_RUNNER_PASSWORD",
)  # fmt: skip


def filled(example: str) -> tuple[str, list[str]]:
    """The example's text with each empty secret set, and the names set."""
    lines, made = [], []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in SECRETS and not value.strip():
            line = f"{key.strip()}={secrets.token_urlsafe(24)}"
            made.append(key.strip())
        lines.append(line)
    return "\n".join(lines) + "\n", made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", type=Path, default=Path(".env"))
    parser.add_argument("--example", type=Path, default=Path(".env.example"))
    args = parser.parse_args(argv)
    if args.env.exists():
        sys.exit(f"error: {args.env} exists: its secrets made the stack's volumes; edit it instead")
    text, made = filled(args.example.read_text())
    missing = [name for name in SECRETS if name not in made and f"\n{name}=" not in f"\n{text}"]
    if missing:
        sys.exit(f"error: {args.example} has no line for {', '.join(missing)}")
    folder = args.env.resolve().parent
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".env.", text=True)  # mode 600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.link(temporary, args.env)  # fails, rather than overwrites, if .env appeared meanwhile
    except FileExistsError:
        sys.exit(f"error: {args.env} exists: its secrets made the stack's volumes; edit it instead")
    finally:
        os.unlink(temporary)
    print(f"wrote {args.env} (mode 600) with random {', '.join(made) or 'nothing'}")


if __name__ == "__main__":
    main()
