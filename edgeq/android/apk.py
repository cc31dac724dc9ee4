"""The demo app's APK, built offline without Gradle or an Android SDK download, and checked.

This proves the app compiles against Android's API and ExecuTorch's Java API, dexes, and packages
into a signed, aligned APK with the model stored uncompressed and the arm64-v8a runtime inside.
`edgeq android check` (runtime_check.py) then runs that runtime on the packaged model. Nothing here
runs Android itself: the runtime packaged here comes from npm (ExecuTorch 1.1.0, the newest whose
Java classes Debian's dx accepts) and needs fbjni's and SoLoader's Java classes at run time, which
only Maven has; the Gradle project (android_demo/) gets its runtime from Maven Central.

What it fetches, into the cache (EDGEQ_CACHE, default ~/.cache/edgeq) under android/:
    platform/   android.jar (API 23) and the dx dexer: Debian 11 packages libandroid-23-java and
                dalvik-exchange, through a private APT configuration (Debian 12 has neither)
    runtime/    ExecuTorch's Java API (classes.jar), libexecutorch.so and its C++ headers (include/) from
                the npm package react-native-executorch; libfbjni.so and libc++_shared.so from
                react-native's .aar
Host tools (Debian 12 packages): aapt, zipalign, apksigner, and a JDK (javac, java, keytool).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeq import fetch
from edgeq.errors import EdgeqError
from edgeq.fetch import DEBIAN, Log
from edgeq.manifest import sha256_file, write_atomic
from edgeq.paths import inside

STEP = "android apk"
PLATFORM_PACKAGES = ("libandroid-23-java", "dalvik-exchange")
EXECUTORCH_NPM = "react-native-executorch@0.8.5"
# The ExecuTorch release inside it: the library carries no version string, so this is the package's
# documented one (0.8.x: 1.1.0). 0.9.x (1.3) ships Java 11 classes that dx rejects.
RUNTIME_EXECUTORCH = "1.1.0"
HEADERS = ("executorch", "c10", "torch")  # under package/third-party/include: what the runtime's API includes
FBJNI_NPM = "react-native@0.70.15"
ABI = "arm64-v8a"
HOST_TOOLS = ("aapt", "zipalign", "apksigner", "javac", "java", "keytool")
REQUIRED = ("AndroidManifest.xml", "classes.dex", "resources.arsc", "assets/model.pte", "assets/labels.txt",
            "assets/preprocess.json", "assets/golden/golden.json", f"lib/{ABI}/libexecutorch.so",
            f"lib/{ABI}/libfbjni.so", f"lib/{ABI}/libc++_shared.so")


@dataclass(frozen=True)
class Toolchain:
    android_jar: Path
    dx_jar: Path
    executorch_jar: Path
    native_libs: tuple[Path, ...]  # lib/arm64-v8a/*.so
    keystore: Path
    headers: Path  # the runtime's C++ headers


@dataclass
class ApkCheck:
    path: str
    bytes: int
    sha256: str
    package: str
    min_sdk: int
    target_sdk: int
    native_code: list[str]
    entries: int
    pte_stored: bool
    signatures: list[str] = field(default_factory=list)  # schemes apksigner verified: v1, v2, v3


def toolchain(log: Log = lambda _: None) -> Toolchain:
    """What the build needs, fetched into the cache on first use."""
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing:
        raise EdgeqError(f"building the APK needs {', '.join(missing)} on the host: apt-get install aapt zipalign "
                         "apksigner openjdk-17-jdk-headless (scripts/setup.sh does it as root)")
    root = fetch.cache_root() / "android"
    platform = fetch.cached_step(root / "platform", f"bullseye {' '.join(PLATFORM_PACKAGES)}", _platform, log)
    runtime = fetch.cached_step(root / "runtime", f"{EXECUTORCH_NPM} {FBJNI_NPM} {ABI}", _runtime, log)
    keystore = root / "debug.keystore"
    if not keystore.is_file():
        tmp = keystore.with_name(f".debug.keystore.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        fetch.run(["keytool", "-genkeypair", "-keystore", str(tmp), "-storepass", "android", "-keypass", "android",
                   "-alias", "androiddebugkey", "-keyalg", "RSA", "-keysize", "2048", "-validity", "10000",
                   "-dname", "CN=Android Debug,O=Android,C=US"], "create a debug signing key", STEP)
        os.replace(tmp, keystore)
    return Toolchain(platform / "android.jar", platform / "dx.jar", runtime / "executorch-classes.jar",
                     tuple(sorted((runtime / "lib" / ABI).glob("*.so"))), keystore, runtime / "include")


def _platform(out: Path) -> None:
    scratch = out.with_name(out.name + ".apt")
    try:
        debs = fetch.apt_download(PLATFORM_PACKAGES, "amd64", [f"{DEBIAN} bullseye"], scratch / "debs",
                                  scratch / "apt", "android.jar and dx (Debian 11 bullseye)", STEP)
        for deb in debs:
            fetch.run(["dpkg-deb", "-x", str(deb), str(scratch / "root")], f"unpack {deb.name}", STEP)
        java = scratch / "root" / "usr" / "share" / "java"
        shutil.copyfile(java / "com.android.android-23.jar", out / "android.jar")
        shutil.copyfile(next(java.glob("com.android.dx-*.jar")), out / "dx.jar")
        (out / "PACKAGES").write_text("".join(d.name + "\n" for d in debs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _runtime(out: Path) -> None:
    scratch = out.with_name(out.name + ".npm")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        fetch.run(["npm", "pack", "--silent", "--pack-destination", str(scratch), EXECUTORCH_NPM, FBJNI_NPM],
                  f"fetch {EXECUTORCH_NPM} and {FBJNI_NPM} from the npm registry", STEP, cwd=scratch)
        (out / "lib" / ABI).mkdir(parents=True)
        executorch = _members(next(scratch.glob("react-native-executorch-*.tgz")), {
            "package/android/libs/classes.jar": out / "executorch-classes.jar",
            f"package/third-party/android/libs/executorch/{ABI}/libexecutorch.so": out / "lib" / ABI / "libexecutorch.so"},
            {f"package/third-party/include/{h}/": out / "include" / h for h in HEADERS})
        aar = "package/android/com/facebook/react/react-native/0.70.15/react-native-0.70.15-release.aar"
        _members(next(scratch.glob("react-native-0*.tgz")), {aar: scratch / "react-native.aar"})
        with zipfile.ZipFile(scratch / "react-native.aar") as z:
            for lib in ("libfbjni.so", "libc++_shared.so"):
                (out / "lib" / ABI / lib).write_bytes(z.read(f"jni/{ABI}/{lib}"))
        (out / "SOURCES").write_text(f"{executorch}\n{EXECUTORCH_NPM}\n{FBJNI_NPM} (release .aar)\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _members(tgz: Path, wanted: dict[str, Path], folders: dict[str, Path] | None = None) -> str:
    """Extract the named files, and the regular files under the named folders, of an npm tarball; an
    error names what it lacks. Member names are checked to stay inside their folder."""
    folders = folders or {}
    with tarfile.open(tgz) as tar:
        for member in tar:
            if member.name in wanted:
                wanted[member.name].write_bytes(tar.extractfile(member).read())
            prefix = next((p for p in folders if member.name.startswith(p)), None)
            if prefix and member.isfile():
                path = inside(folders[prefix], member.name[len(prefix):], f"{tgz.name} member")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(member).read())
    lacking = [name for name, path in wanted.items() if not path.is_file()]
    lacking += [name for name, path in folders.items() if not path.is_dir()]
    if lacking:
        raise EdgeqError(f"{STEP}: {tgz.name} has no {', '.join(lacking)}: the npm package changed its layout")
    return tgz.name


def build(app: str | Path, out: str | Path, log: Log = lambda _: None) -> ApkCheck:
    """android_demo/ (with assets from `edgeq android`) → a signed, aligned, checked debug APK at `out`."""
    app, out = Path(app) / "app", Path(out)
    if not (app / "src" / "main" / "assets" / "model.pte").is_file():
        raise EdgeqError(f"{app / 'src/main/assets'} has no model.pte: run edgeq android DIST {app.parent} first")
    tools = toolchain(log)
    config = _gradle_config(app / "build.gradle")
    with tempfile.TemporaryDirectory(prefix="edgeq-apk-") as tmp:
        work = Path(tmp)
        manifest = work / "AndroidManifest.xml"
        manifest.write_text(_manifest_for_aapt((app / "src" / "main" / "AndroidManifest.xml").read_text(), config))
        res, assets = app / "src" / "main" / "res", app / "src" / "main" / "assets"
        base = ["-M", str(manifest), "-S", str(res), "-I", str(tools.android_jar)]
        log("apk: aapt → R.java, javac, dx")
        (work / "gen").mkdir()
        fetch.run(["aapt", "package", "-f", "-m", "-J", str(work / "gen"), *base], "generate R.java (aapt)", STEP,
                  fix=f"fix the manifest or resources under {app / 'src/main'}")
        sources = [str(p) for p in sorted((work / "gen").rglob("*.java")) + sorted((app / "src" / "main" / "java").rglob("*.java"))]
        # --release 8 (not -bootclasspath android.jar): API 23's android.jar lacks the java.lang.invoke
        # classes javac needs for lambdas; android.* still resolves against android.jar only.
        fetch.run(["javac", "--release", "8", "-nowarn", "-encoding", "UTF-8", "-d", str(work / "classes"),
                   "-cp", f"{tools.android_jar}{os.pathsep}{tools.executorch_jar}", *sources],
                  "compile the app (javac)", STEP, fix=f"fix the Java sources under {app / 'src'}")
        (work / "pkg" / "lib" / ABI).mkdir(parents=True)
        fetch.run(["java", "-cp", str(tools.dx_jar), "com.android.dx.command.Main", "--dex",
                   f"--min-sdk-version={config['minSdk']}", f"--output={work / 'pkg' / 'classes.dex'}",
                   str(work / "classes"), str(tools.executorch_jar)], "dex the classes (dx)", STEP)
        log("apk: aapt package, zipalign, apksigner")
        unaligned = work / "unaligned.apk"
        # -0 pte: ExecuTorch memory-maps the model, so it must stay stored, not deflated.
        fetch.run(["aapt", "package", "-f", *base, "-A", str(assets), "-0", "pte", "-F", str(unaligned)],
                  "package resources and assets (aapt)", STEP)
        names = ["classes.dex"]
        for lib in tools.native_libs:
            shutil.copyfile(lib, work / "pkg" / "lib" / ABI / lib.name)
            names.append(f"lib/{ABI}/{lib.name}")
        fetch.run(["aapt", "add", str(unaligned), *names], "add classes.dex and native libraries (aapt)", STEP,
                  cwd=work / "pkg")
        fetch.run(["zipalign", "-p", "-f", "4", str(unaligned), str(work / "aligned.apk")], "align (zipalign)", STEP)
        signed = work / "signed.apk"
        fetch.run(["apksigner", "sign", "--ks", str(tools.keystore), "--ks-pass", "pass:android", "--key-pass",
                   "pass:android", "--ks-key-alias", "androiddebugkey", "--out", str(signed), str(work / "aligned.apk")],
                  "sign with the debug key (apksigner)", STEP)
        result = check(signed, {"package": config["applicationId"], "minSdk": config["minSdk"]})
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, signed.read_bytes())
    result.path = str(out)
    return result


def open_apk(apk: Path) -> zipfile.ZipFile:
    """The APK as a zip, or a one-line error saying how to get one."""
    if not apk.is_file():
        raise EdgeqError(f"{apk} does not exist: build it with edgeq android DIST APP --apk {apk}")
    try:
        return zipfile.ZipFile(apk)
    except (zipfile.BadZipFile, OSError) as e:
        raise EdgeqError(f"{apk} is not an APK ({e}): build one with edgeq android DIST APP --apk PATH") from None


def check(apk: Path, expect: dict[str, str] | None = None) -> ApkCheck:
    """The entries the app needs, zipalign -c, apksigner verify and aapt dump badging."""
    with open_apk(apk) as z:
        infos = {i.filename: i for i in z.infolist()}
    lacking = [name for name in REQUIRED if name not in infos]
    problems = [f"lacks {', '.join(lacking)}"] if lacking else []
    if "assets/model.pte" in infos and infos["assets/model.pte"].compress_type != zipfile.ZIP_STORED:
        problems.append("stores model.pte compressed (ExecuTorch cannot memory-map it)")
    if subprocess.run(["zipalign", "-c", "-p", "4", str(apk)], capture_output=True).returncode != 0:
        problems.append("is not 4-byte aligned (zipalign -c)")
    if problems:
        raise EdgeqError(f"{apk} {'; '.join(problems)}")
    fix = "rebuild it with edgeq android DIST APP --apk PATH"
    verify = fetch.run(["apksigner", "verify", "--verbose", str(apk)], f"verify the signature of {apk.name}", STEP,
                       fix=fix)
    badging = fetch.run(["aapt", "dump", "badging", str(apk)], f"read {apk.name} (aapt dump badging)", STEP, fix=fix)
    package = re.search(r"package: name='([^']+)'", badging)
    min_sdk = re.search(r"sdkVersion:'(\d+)'", badging)
    target_sdk = re.search(r"targetSdkVersion:'(\d+)'", badging)
    if expect and (package is None or package.group(1) != expect["package"]):
        problems.append(f"has package {package.group(1) if package else None}, not {expect['package']}")
    if expect and (min_sdk is None or min_sdk.group(1) != str(expect["minSdk"])):
        problems.append(f"has minSdk {min_sdk.group(1) if min_sdk else None}, not {expect['minSdk']}")
    if problems:
        raise EdgeqError(f"{apk} {'; '.join(problems)}")
    native = re.search(r"native-code: (.*)", badging)
    return ApkCheck(path=str(apk), bytes=apk.stat().st_size, sha256=sha256_file(apk), package=package.group(1),
                    min_sdk=int(min_sdk.group(1)), target_sdk=int(target_sdk.group(1)) if target_sdk else 0,
                    native_code=re.findall(r"'([^']+)'", native.group(1)) if native else [], entries=len(infos),
                    pte_stored=True, signatures=re.findall(r"Verified using (v\d+) scheme.*: true", verify))


def _gradle_config(build_gradle: Path) -> dict[str, str]:
    """applicationId, minSdk, targetSdk, versionCode, versionName from app/build.gradle: one source of truth."""
    text = build_gradle.read_text()
    config = {}
    for key in ("applicationId", "minSdk", "targetSdk", "versionCode", "versionName"):
        m = re.search(rf'^\s*{key}\s+"?([^"\s]+)"?', text, re.M)
        if m is None:
            raise EdgeqError(f"{build_gradle} sets no {key}: restore it from the edgeq repository")
        config[key] = m.group(1)
    return config


def _manifest_for_aapt(manifest: str, config: dict[str, str]) -> str:
    """AGP 8 takes the package, versions and SDK levels from build.gradle; aapt needs them in the manifest."""
    attrs = (f' package="{config["applicationId"]}" android:versionCode="{config["versionCode"]}"'
             f' android:versionName="{config["versionName"]}"')
    uses_sdk = (f'\n    <uses-sdk android:minSdkVersion="{config["minSdk"]}" '
                f'android:targetSdkVersion="{config["targetSdk"]}" />')
    return re.sub(r"<manifest\b([^>]*)>", lambda m: f"<manifest{m.group(1)}{attrs}>{uses_sdk}", manifest, count=1)
