"""Every front end on the demo models on one device, in bfloat16 and float32.

    scripts/gpu-smoke                     # cuda; exit 2 with "no CUDA device" without one
    scripts/gpu-smoke --device cpu --quick
    scripts/gpu-smoke --json smoke.json   # also $OUT/gpu-smoke.json when $OUT is set

Rows (per dtype): the CLI, the Python API, the server through the official ``openai``
client (same pixels as the API), a teleport hit (pixel-identical to the full run),
img2img and inpaint (a repeat hits the VAE-latent cache and teleport: same pixels), a
per-request LoRA (changes the image; scale 0 is the plain image), a static step cache
(a teleport hit equals that engine's full run) and torch.compile (runs; same size).
A pass/fail table is printed; the exit status is 1 if any row failed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))  # knob_files, localredis: test helpers

SMALL = {"width": 64, "height": 64, "steps": 4, "seed": 7}
PROMPT = "a red robot in the rain"
ROWS = ("cli", "api", "server+openai", "teleport", "img2img", "inpaint", "lora",
        "step-cache", "compile")
QUICK_ROWS = ("cli", "api", "server+openai", "teleport", "img2img", "inpaint", "lora",
              "step-cache")


class SmokeFailure(AssertionError):
    """A row's check did not hold."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise SmokeFailure(message)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).copy()


def same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise SmokeFailure(f"{what}: shapes {a.shape} and {b.shape}")
    diff = int(np.abs(a.astype(int) - b.astype(int)).max())
    check(diff == 0, f"{what}: pixels differ by up to {diff} levels")


def source() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def box_mask() -> Image.Image:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    return Image.fromarray(mask, "L")


class Smoke:
    """The checks for one device and dtype; engines are loaded once and shared by rows."""

    def __init__(self, device: str, dtype: str, home: Path) -> None:
        self.device, self.dtype, self.home = device, dtype, home
        self._engines: dict[str, object] = {}
        self.api_image: np.ndarray | None = None

    def settings(self, **extra):
        from zturbo import Settings

        return Settings(model="demo", device=self.device, dtype=self.dtype,
                        teleport_start_step=2, lora_dirs=[str(self.home / "loras")], **extra)

    def engine(self, name: str = "plain", **extra):
        import zturbo

        if name not in self._engines:
            self._engines[name] = zturbo.load("demo", settings=self.settings(**extra))
        return self._engines[name]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()

    def env(self) -> dict[str, str]:
        return {**os.environ, "ZTURBO_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}

    # ---- rows

    def cli(self) -> str:
        out = self.home / f"cli-{self.dtype}.png"
        cmd = [sys.executable, "-m", "zturbo.cli", "generate", PROMPT, "--model", "demo",
               "--device", self.device, "--dtype", self.dtype, "--seed", str(SMALL["seed"]),
               "-W", "64", "-H", "64", "--steps", str(SMALL["steps"]), "-o", str(out), "--json"]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=self.env(),
                              timeout=240)
        check(proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        image = Image.open(out)
        check(image.size == (64, 64), f"size {image.size}")
        self.cli_image = pixels(image)
        return f"{out.name} {image.size[0]}x{image.size[1]}"

    def api(self) -> str:
        result = self.engine().generate(PROMPT, teleport=False, **SMALL)
        image = pixels(result.images[0])
        check(image.shape == (64, 64, 3), f"shape {image.shape}")
        check(image.std() > 0, "a flat image")
        self.api_image = image
        if getattr(self, "cli_image", None) is not None:
            same(image, self.cli_image, "the CLI's PNG vs the API's image")
            return "same pixels as the CLI"
        return "ok"

    def server_openai(self) -> str:
        from localredis import free_port

        port = free_port()
        cmd = [sys.executable, "-m", "zturbo.cli", "serve", "--model", "demo", "--port",
               str(port), "--device", self.device, "--dtype", self.dtype]
        log_path = self.home / f"server-{self.dtype}.log"
        with open(log_path, "w") as log, \
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env()) as proc:
            try:
                return self._ask_server(proc, port, log_path)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def _ask_server(self, proc, port: int, log_path: Path) -> str:
        """Wait until the server is ready, then one image through the openai client."""
        import httpx  # heavy client libraries: imported when the row runs
        from openai import OpenAI

        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            check(proc.poll() is None, f"the server exited ({proc.returncode}); see {log_path}")
            try:
                if httpx.get(f"{base}/api/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise SmokeFailure("the server was not ready within 180 s")
        client = OpenAI(base_url=f"{base}/v1", api_key="smoke")
        out = client.images.generate(prompt=PROMPT, n=1, size="64x64", extra_body={
            "seed": SMALL["seed"], "num_inference_steps": SMALL["steps"]})
        image = pixels(Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json))))
        if self.api_image is not None:
            same(image, self.api_image, "the server's PNG vs the API's image")
            return "same pixels as the API"
        return "ok"

    def teleport(self) -> str:
        return self._replay(self.engine(), "teleport", {})

    def img2img(self) -> str:
        return self._replay(self.engine(), "img2img", {"image": source(), "strength": 0.75})

    def inpaint(self) -> str:
        return self._replay(self.engine(), "inpaint",
                            {"image": source(), "mask": box_mask(), "strength": 0.75})

    def _replay(self, engine, what: str, extra: dict, steps: int = 4) -> str:
        """A full run (teleport off), a run that stores, a run that must hit: same pixels."""
        fields = {**SMALL, "steps": steps, "prompt": f"{PROMPT} ({what} {self.dtype})", **extra}
        full = pixels(engine.generate(teleport=False, **fields).images[0])
        first = engine.generate(**fields)
        second = engine.generate(**fields)
        check(not first.teleport[0].hit, f"first run hit: {first.teleport[0]}")
        check(second.teleport[0].hit, f"repeat did not hit: {second.teleport[0]}")
        same(pixels(first.images[0]), full, "the storing run vs the full run")
        same(pixels(second.images[0]), full, "the teleport hit vs the full run")
        return f"hit at step {second.teleport[0].hit_step} = full run"

    def lora(self) -> str:
        from knob_files import make_lora

        folder = self.home / "loras"
        folder.mkdir(exist_ok=True)
        if not (folder / "smoke.safetensors").exists():
            make_lora(self.engine(), folder, name="smoke")
        engine = self.engine()
        fields = {**SMALL, "prompt": PROMPT, "teleport": False}
        plain = pixels(engine.generate(**fields).images[0])
        styled = pixels(engine.generate(loras=["smoke:1.0"], **fields).images[0])
        zero = pixels(engine.generate(loras=["smoke:0.0"], **fields).images[0])
        after = pixels(engine.generate(**fields).images[0])
        check(not np.array_equal(plain, styled), "the LoRA did not change the image")
        same(zero, plain, "scale 0 vs no LoRA")
        same(after, plain, "a plain request after the LoRA one")
        return "changes the image; scale 0 and the next request are plain"

    def step_cache(self) -> str:
        engine = self.engine("step-cache", step_cache="dbcache", step_cache_preset="fast")
        return self._replay(engine, "step-cache", {}, steps=8)

    def compile(self) -> str:
        engine = self.engine("compile", compile=True)
        started = time.perf_counter()
        image = pixels(engine.generate(PROMPT, teleport=False, **SMALL).images[0])
        check(image.shape == (64, 64, 3), f"shape {image.shape}")
        again = pixels(engine.generate(PROMPT, teleport=False, **SMALL).images[0])
        same(again, image, "two compiled runs")
        return f"first run {time.perf_counter() - started:.1f} s (compile included)"


def run_row(smoke: Smoke, row: str) -> dict:
    method: Callable[[], str] = getattr(smoke, row.replace("+openai", "_openai").replace("-", "_"))
    started = time.perf_counter()
    try:
        detail, ok = method(), True
    except SmokeFailure as exc:
        detail, ok = str(exc), False
    except Exception as exc:  # noqa: BLE001 - a crash is a failed row with its reason
        detail, ok = f"{type(exc).__name__}: {exc}", False
        traceback.print_exc()
    return {"row": row, "dtype": smoke.dtype, "ok": ok, "seconds": round(time.perf_counter() - started, 2),
            "detail": detail.replace("\n", " ")[:300]}


def table(rows: list[dict]) -> str:
    lines = ["| row | dtype | result | seconds | detail |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['row']} | {r['dtype']} | {'pass' if r['ok'] else 'FAIL'} | {r['seconds']} "
              f"| {r['detail']} |" for r in rows]
    return "\n".join(lines)


@contextmanager
def state_home(path: Path | None):
    """A fresh state dir with the demo models (ZTURBO_HOME), removed after unless given."""
    from zturbo.engine import demo

    with tempfile.TemporaryDirectory(prefix="zturbo-smoke-") as tmp:
        home = path or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        old = os.environ.get("ZTURBO_HOME")
        os.environ["ZTURBO_HOME"] = str(home)
        try:
            for name in ("demo",):
                demo.ensure(name, home / "models")
            yield home
        finally:
            if old is None:
                os.environ.pop("ZTURBO_HOME", None)
            else:
                os.environ["ZTURBO_HOME"] = old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, mps or cpu")
    parser.add_argument("--dtype", action="append", choices=["bfloat16", "float32"],
                        help="repeat for several (default: bfloat16 and float32; --quick: float32)")
    parser.add_argument("--quick", action="store_true",
                        help=f"rows {', '.join(QUICK_ROWS)} (no compile), float32 only")
    parser.add_argument("--rows", default=None, help="comma-separated subset of " + ", ".join(ROWS))
    parser.add_argument("--json", type=Path, default=None,
                        help="write the rows here (default: $OUT/gpu-smoke.json when $OUT is set)")
    parser.add_argument("--home", type=Path, default=None, help="state dir to use and keep")
    args = parser.parse_args(argv)

    import torch

    kind = args.device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) "
              "sees none; run with --device cpu, or on a machine with a GPU", file=sys.stderr)
        return 2
    if kind == "mps" and not torch.backends.mps.is_available():
        print("no MPS device", file=sys.stderr)
        return 2
    dtypes = args.dtype or (["float32"] if args.quick else ["bfloat16", "float32"])
    rows = args.rows.split(",") if args.rows else list(QUICK_ROWS if args.quick else ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")

    started = time.perf_counter()
    results = []
    with state_home(args.home) as home:
        for dtype in dtypes:
            smoke = Smoke(args.device, dtype, home)
            try:
                results += [run_row(smoke, row) for row in rows]
            finally:
                smoke.close()
    device_name = torch.cuda.get_device_name() if kind == "cuda" else args.device
    print(f"gpu-smoke on {device_name}, torch {torch.__version__}, "
          f"{time.perf_counter() - started:.1f} s")
    print(table(results))
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    target = args.json or (Path(os.environ["OUT"]) / "gpu-smoke.json" if os.environ.get("OUT") else None)
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                      "rows": results}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
