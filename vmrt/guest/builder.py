"""``vmrt guest-image build``: a reproducible kernel + initramfs from Debian packages.

The result lives in ``<root>/guest-images/<key>/`` where ``key`` hashes
everything that goes in: the recipe in ``guest-image/``, this builder, the
agent's sources, the exact Debian package versions and the pinned wheels.
A second build with the same inputs finds the image and does nothing; the
``default`` symlink always points at the newest build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmrt.errors import VmrtError
from vmrt.guest import debs
from vmrt.guest.image import IMAGE_FORMAT, MANIFEST, GuestImage, GuestImageError, sha256_file
from vmrt.guest.kernel import extract_vmlinux

SOURCE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = SOURCE_ROOT / "guest-image"
# Epoch for every mtime in the archives, so equal inputs give equal bytes.
SOURCE_DATE_EPOCH = 0


class BuildError(VmrtError):
    pass


@dataclass(frozen=True)
class Recipe:
    directory: Path
    kernel_package: str
    packages: tuple[str, ...]
    wheels: tuple[str, ...]
    modules: tuple[str, ...]

    @classmethod
    def load(cls, directory: Path) -> Recipe:
        if not (directory / "packages.txt").exists():
            raise BuildError(f"no guest image recipe in {directory} (packages.txt is missing)")
        kernel = ""
        packages = []
        for words in _lines(directory / "packages.txt"):
            if words[0] == "kernel":
                kernel = words[1]
            else:
                packages.append(words[0])
        if not kernel:
            raise BuildError("packages.txt names no kernel metapackage")
        return cls(
            directory=directory,
            kernel_package=kernel,
            packages=tuple(packages),
            wheels=tuple(w[0] for w in _lines(directory / "wheels.txt")),
            modules=tuple(w[0] for w in _lines(directory / "modules.txt")),
        )


def _lines(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            rows.append(words)
    return rows


def _agent_sources() -> list[Path]:
    agent = SOURCE_ROOT / "vmrt" / "agent"
    return [SOURCE_ROOT / "vmrt" / "__init__.py", *sorted(agent.rglob("*.py"))]


def _hash_files(h: hashlib._Hash, paths: Iterable[Path]) -> None:
    for path in paths:
        h.update(str(path.relative_to(SOURCE_ROOT)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")


def image_key(recipe: Recipe, packages: list[debs.Package]) -> str:
    h = hashlib.sha256()
    h.update(f"format={IMAGE_FORMAT}\0".encode())
    _hash_files(h, sorted(p for p in recipe.directory.iterdir() if p.is_file()))
    _hash_files(h, sorted((SOURCE_ROOT / "vmrt" / "guest").glob("*.py")))
    _hash_files(h, _agent_sources())
    h.update(json.dumps([p.as_dict() for p in packages], sort_keys=True).encode())
    return h.hexdigest()[:16]


class Builder:
    def __init__(
        self,
        root: Path,
        recipe_dir: Path = DEFAULT_RECIPE,
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.images_dir = root / "guest-images"
        self.cache_dir = root / "cache"
        self.recipe = Recipe.load(recipe_dir)
        self._progress = progress
        self._steps = 0

    def _step(self, message: str) -> None:
        self._steps += 1
        self._progress(f"[{self._steps}/9] {message}")

    def build(self, force: bool = False) -> GuestImage:
        _require_tools("apt-get", "apt-cache", "dpkg-deb", "cpio")
        self._step("resolving Debian packages")
        packages = debs.resolve(self.recipe.kernel_package, list(self.recipe.packages))
        key = image_key(self.recipe, packages)
        final = self.images_dir / key
        if final.exists() and not force:
            try:
                image = GuestImage.load(final)
            except GuestImageError as exc:
                self._progress(f"existing image {key} is damaged ({exc}); rebuilding")
            else:
                self._progress(f"guest image {key} is up to date")
                self._point_default(key)
                return image
        self.images_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=self.images_dir))
        try:
            out = work / "image"
            out.mkdir()
            manifest = self._build_into(work, out, packages, key)
            (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)
            out.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._point_default(key)
        return GuestImage.load(final)

    def _point_default(self, key: str) -> None:
        link = self.images_dir / "default"
        tmp = self.images_dir / f".default-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(key)
        tmp.replace(link)

    # -- the build proper -----------------------------------------------

    def _build_into(
        self, work: Path, out: Path, packages: list[debs.Package], key: str
    ) -> dict[str, object]:
        self._step(f"fetching {len(packages)} Debian packages")
        debroot = work / "debroot"
        debroot.mkdir()
        for package in packages:
            debs.extract(debs.fetch(package, self.cache_dir / "debs"), debroot)

        self._step("extracting the kernel as an uncompressed PVH vmlinux")
        vmlinuz = sorted((debroot / "boot").glob("vmlinuz-*"))
        if len(vmlinuz) != 1:
            raise BuildError(f"expected one vmlinuz in {packages[0].name}, found {len(vmlinuz)}")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        extract_vmlinux(vmlinuz[0], out / "vmlinux")

        self._step("fetching Python wheels " + " ".join(self.recipe.wheels))
        site = work / "site"
        self._install_wheels(site)

        self._step("assembling the root tree")
        tree = work / "tree"
        self._assemble(tree, debroot, release)

        self._step("trimming and compiling Python (agent, stdlib, grpc)")
        python_report = self._prepare_python(work, debroot, site, tree)

        self._step("checking shared-library dependencies")
        libs = self._copy_libraries(debroot, tree)

        self._step("writing initrd.img")
        _write_cpio(tree, out / "initrd.img")

        self._step("writing marker.img and rootfs-busybox")
        marker = work / "marker"
        _busybox_tree(marker, debroot)
        shutil.copy2(self.recipe.directory / "marker-init", marker / "init")
        _write_cpio(marker, out / "marker.img")
        _busybox_tree(out / "rootfs-busybox", debroot)
        _etc_files(out / "rootfs-busybox", "container")

        files = {
            name: {"size": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
            for name in ("vmlinux", "initrd.img", "marker.img")
        }
        return {
            "format": IMAGE_FORMAT,
            "key": key,
            "kernel_release": release,
            "packages": [p.as_dict() for p in packages],
            "wheels": list(self.recipe.wheels),
            "python": python_report.get("python"),
            "stdlib_modules": python_report.get("stdlib_modules", []),
            "libraries": libs,
            "files": files,
        }

    def _install_wheels(self, site: Path) -> None:
        wheel_dir = self.cache_dir / "wheels"
        wheel_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
            "--abi", "cp311", "--abi", "abi3", "--abi", "none",
            "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
            "-d", str(wheel_dir), *self.recipe.wheels,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"pip download of the guest wheels failed: {proc.stderr.strip()}")
        site.mkdir()
        for pin in self.recipe.wheels:
            name, _, version = pin.partition("==")
            matches = sorted(wheel_dir.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
            if not matches:
                raise BuildError(f"pip downloaded no wheel for {pin}")
            with zipfile.ZipFile(matches[0]) as wheel:
                for member in wheel.namelist():
                    top = member.split("/")[0]
                    if top.endswith((".dist-info", ".data")):
                        continue
                    wheel.extract(member, site)

    def _assemble(self, tree: Path, debroot: Path, release: str) -> None:
        _busybox_tree(tree, debroot)
        for sub in ("newroot", "lib/modules", "lib/x86_64-linux-gnu", "lib64", "usr/bin",
                    "var", "mnt"):
            (tree / sub).mkdir(parents=True, exist_ok=True)
        (tree / "var" / "run").symlink_to("../run")
        shutil.copy2(self.recipe.directory / "init", tree / "init")
        os.chmod(tree / "init", 0o755)
        shutil.copy2(self.recipe.directory / "modprobe", tree / "usr/bin/vmrt-modprobe")
        os.chmod(tree / "usr/bin/vmrt-modprobe", 0o755)
        for binary in ("usr/bin/python3.11", "usr/bin/crun"):
            shutil.copy2(debroot / binary, tree / binary)
        (tree / "usr/bin/python3").symlink_to("python3.11")
        moddir = debroot / "lib" / "modules" / release / "kernel"
        for module in self.recipe.modules:
            src = moddir / f"{module}.ko"
            if not src.exists():
                raise BuildError(f"kernel module {module}.ko is not in {release}'s module tree")
            shutil.copy2(src, tree / "lib" / "modules" / src.name)
        _etc_files(tree, "vmrt")
        _install_fstab(self.recipe.directory, tree)

    def _guest_loader(self, debroot: Path) -> list[str]:
        libdirs = [debroot / "lib/x86_64-linux-gnu", debroot / "usr/lib/x86_64-linux-gnu"]
        return [str(debroot / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
                "--library-path", ":".join(str(d) for d in libdirs)]

    def _prepare_python(self, work: Path, debroot: Path, site: Path,
                        tree: Path) -> dict[str, object]:
        agent_src = work / "agent-src"
        for path in _agent_sources():
            dst = agent_src / path.relative_to(SOURCE_ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst)
        # The guest's interpreter, run through the guest's loader and libraries.
        argv = [*self._guest_loader(debroot), str(debroot / "usr/bin/python3.11"), "-S", "-B",
                str(self.recipe.directory / "pyprep.py"), str(tree), str(site), str(agent_src),
                str(self.recipe.directory / "stdlib-extra.txt")]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise BuildError(f"preparing the guest's Python failed:\n{proc.stderr.strip()}")
        report: dict[str, object] = json.loads(proc.stdout)
        return report

    def _copy_libraries(self, debroot: Path, tree: Path) -> list[str]:
        """Copy the DT_NEEDED closure of every ELF in the tree; fail on anything missing."""
        elves = [p for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink()
                 and _is_dynamic_elf(p)]
        needed: dict[str, Path] = {}
        for elf in elves:
            proc = subprocess.run([*self._guest_loader(debroot), "--list", str(elf)],
                                  capture_output=True, text=True, check=False)
            for line in proc.stdout.splitlines():
                parts = line.split()
                if "=>" not in parts:
                    continue
                soname, target = parts[0], parts[parts.index("=>") + 1]
                if "/" in soname:
                    # The program interpreter, listed by absolute path; it is
                    # copied on its own below.
                    continue
                if target == "not":
                    raise BuildError(
                        f"{elf.relative_to(tree)} needs {soname}, which no package in "
                        "packages.txt provides"
                    )
                path = Path(target)
                if debroot not in path.parents:
                    raise BuildError(
                        f"{elf.relative_to(tree)} needs {soname}, found only on the build host "
                        f"({path}); add its Debian package to packages.txt"
                    )
                needed[soname] = path
        libdir = tree / "lib" / "x86_64-linux-gnu"
        for soname, path in sorted(needed.items()):
            source = path.resolve()
            if debroot.resolve() not in source.parents:
                raise BuildError(f"{soname} resolves to {source}, outside the packages")
            _copy_into(tree, source, libdir / soname)
        loader = debroot / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        _copy_into(tree, loader.resolve(), libdir / "ld-linux-x86-64.so.2")
        (tree / "lib64" / "ld-linux-x86-64.so.2").symlink_to(
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        return sorted(needed)


def _copy_into(tree: Path, src: Path, dst: Path) -> None:
    """copy2, refusing any destination outside the tree being built.

    A destination that escapes (an absolute name joined onto a directory, a
    symlink planted by a package) would overwrite a file of the build host.
    """
    resolved = dst.parent.resolve() / dst.name
    if tree.resolve() not in resolved.parents or dst.is_symlink():
        raise BuildError(f"refusing to write {dst} outside the image tree {tree}")
    shutil.copy2(src, dst)


def _require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BuildError("the guest image build needs " + ", ".join(missing)
                         + " (apt-get install apt dpkg cpio)")


def _is_dynamic_elf(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(64)
    # Executables and shared objects; kernel modules are ET_REL.
    return head[:4] == b"\x7fELF" and head[16] in (2, 3)


def _busybox_tree(root: Path, debroot: Path) -> None:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    busybox = root / "bin" / "busybox"
    shutil.copy2(debroot / "bin" / "busybox", busybox)
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    for sub in ("proc", "sys", "dev", "run", "etc", "root"):
        (root / sub).mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)


def _etc_files(root: Path, hostname: str) -> None:
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (etc / "hostname").write_text(hostname + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n")
    (etc / "resolv.conf").write_text("")


def _install_fstab(recipe: Path, root: Path) -> None:
    shutil.copy2(recipe / "fstab", root / "etc" / "fstab")


def _write_cpio(tree: Path, output: Path) -> None:
    """A newc archive with sorted names, root ownership and fixed mtimes."""
    names = ["."]
    for path in sorted(tree.rglob("*")):
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
        names.append(str(path.relative_to(tree)))
    os.utime(tree, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
    with output.open("wb") as out:
        proc = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
            input="\n".join(names).encode() + b"\n", cwd=tree, stdout=out,
            stderr=subprocess.PIPE, check=False,
        )
    if proc.returncode != 0:
        raise BuildError(f"cpio failed: {proc.stderr.decode().strip()}")
    mode = output.stat().st_mode
    os.chmod(output, stat.S_IMODE(mode) | 0o444)
