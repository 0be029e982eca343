#!/usr/bin/env python3
"""Static checks of the Dockerfile and .dockerignore (no Docker engine runs here).

    check_dockerfile.py [REPO_ROOT]

The Dockerfile is parsed by BuildKit's own parser (the `dockerfile` package wraps it), then:
  - the last stage (the default target) is the production image: a distroless nonroot base,
    a non-root USER, the sidecar as ENTRYPOINT;
  - every stage docker-compose.yml builds exists;
  - the builder runs `cargo build --release --locked` for -p sidecar and -p emulator;
  - every workspace member (Cargo.toml) and Cargo.lock is COPYed into the builder, and no
    COPY source is excluded by .dockerignore, so the build context has what cargo reads.
Prints one line per failed check; exits 1 if any failed.
"""
import fnmatch
import pathlib
import re
import sys
import tomllib

import dockerfile
import yaml

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
errors: list[str] = []
passed = 0


def check(ok: bool, message: str) -> None:
    global passed
    if ok:
        passed += 1
    else:
        errors.append(message)


def ignore_patterns() -> list[tuple[bool, str]]:
    path = ROOT / ".dockerignore"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().rstrip("/").lstrip("/")
        out.append((negate, pattern))
    return out


def ignored(rel: str, patterns) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory
    excludes everything below it."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, pattern in patterns:
        pat = pattern.replace("**/", "*").replace("/**", "/*")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            result = not negate
    return result


def main() -> int:
    cmds = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    stages: list[dict] = []
    for cmd in cmds:
        if cmd.cmd.upper() == "FROM":
            v = cmd.value
            name = v[2] if len(v) >= 3 and v[1].upper() == "AS" else None
            stages.append({"base": v[0], "name": name, "cmds": []})
        elif stages:
            stages[-1]["cmds"].append(cmd)
    check(len(stages) >= 2, "Dockerfile: not a multi-stage build")
    by_name = {s["name"]: s for s in stages}

    final = stages[-1]
    check("distroless" in final["base"] and "nonroot" in final["base"],
          f"Dockerfile: the default (last) stage is based on {final['base']}, not a distroless nonroot image")
    users = [c.value[0] for c in final["cmds"] if c.cmd.upper() == "USER"]
    check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), "Dockerfile: the final stage has no non-root USER")
    entry = [c.value for c in final["cmds"] if c.cmd.upper() == "ENTRYPOINT"]
    check(bool(entry) and entry[-1][0].endswith("/sidecar"), "Dockerfile: the final stage's ENTRYPOINT is not the sidecar")

    # Stages docker-compose.yml builds.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for svc, body in compose.get("services", {}).items():
        build = body.get("build")
        if isinstance(build, dict) and build.get("target"):
            check(build["target"] in by_name, f"docker-compose.yml: {svc} builds target {build['target']}, not a Dockerfile stage")

    # The builder.
    builder = by_name.get("builder")
    check(builder is not None, "Dockerfile: no stage named builder")
    if builder is None:
        return report()
    runs = " ".join(" ".join(c.value) for c in builder["cmds"] if c.cmd.upper() == "RUN")
    check(re.search(r"cargo build\b[^&;]*--release", runs) is not None, "Dockerfile: the builder does not cargo build --release")
    check("--locked" in runs, "Dockerfile: cargo build is not --locked")
    for pkg in ("sidecar", "emulator"):
        check(re.search(rf"-p\s+{pkg}\b", runs) is not None, f"Dockerfile: cargo build does not build -p {pkg}")

    copied: set[str] = set()
    patterns = ignore_patterns()
    for c in builder["cmds"]:
        if c.cmd.upper() in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                src = src.rstrip("/")
                copied.add(src)
                check((ROOT / src).exists(), f"Dockerfile: COPY {src}: no such file in the build context")
                check(not ignored(src, patterns), f"Dockerfile: COPY {src}, but .dockerignore excludes it")
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    members = manifest.get("workspace", {}).get("members", [])
    for member in members:
        if member == ".":
            for need in ("Cargo.toml", "Cargo.lock", "src"):
                check(need in copied, f"Dockerfile: the builder does not COPY {need}")
            for target in manifest.get("test", []) + manifest.get("bin", []):
                top = pathlib.PurePosixPath(target["path"]).parts[0]
                check(top in copied, f"Dockerfile: the builder does not COPY {top} (Cargo.toml target {target['name']})")
        else:
            check(member in copied, f"Dockerfile: workspace member {member} is not COPYed into the builder")
    for need in ("target", ".git", ".env"):
        check(ignored(need, patterns), f".dockerignore: {need} is not excluded from the build context")
    return report()


def report() -> int:
    for e in errors:
        print(f"  FAIL {e}")
    print(f"  {passed} Dockerfile checks passed, {len(errors)} failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
