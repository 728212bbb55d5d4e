"""The Docker image (Dockerfile, .dockerignore) as built: no local data or secrets copied in, production
settings, and an unprivileged user for the processes that parse uploaded files. Docker is not
available here, so the files are read the way Docker reads them."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dockerignore_patterns() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line.strip().strip("/").removeprefix("./") for line in lines if line.strip() and not line.startswith("#")}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_it_keeps_local_data_secrets_and_caches_out_of_the_build_context():
    required = {
        "var",  # embedded database, uploads, var/secret_key
        ".venv",
        ".git",
        "media",
        "test-artifacts",
        ".env",
        "**/__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    }
    assert required <= dockerignore_patterns(), required - dockerignore_patterns()


def test_it_runs_the_container_as_an_unprivileged_user():
    instructions = dockerfile_instructions()
    users = [(index, args.split(":")[0]) for index, (name, args) in enumerate(instructions) if name == "USER"]
    assert users, "no USER instruction: the processes would run as root"
    last_index, user = users[-1]
    assert user not in {"root", "0"}
    later = {name for name, _ in instructions[last_index:]}
    assert "CMD" in later or "ENTRYPOINT" in later  # the server starts as that user
    created = " ".join(args for name, args in instructions if name == "RUN")
    assert "useradd" in created and user in created  # the image creates that user


def test_it_builds_an_image_with_production_settings():
    env = " ".join(args for name, args in dockerfile_instructions() if name == "ENV")
    assert "DJANGO_PRODUCTION=1" in env.split()
