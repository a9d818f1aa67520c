"""What the training loop's three known GPU risks cost, each against a baseline timed in
the same run.

    uv run python scripts/gpu_step_costs.py [--device cuda|cpu] [--out costs.json]

a. The data path. A RealNVP train step (Trainer.train_step: uniform dequantization with
   the logit at alpha 0.05, -log p, Adam, gradient clipping, the finite check) fed as the
   loop feeds it today -- ``BatchStream.next().to(device, non_blocking=True)`` from a
   CPU uint8 tensor in pageable memory -- against: the data set pinned; a pinned staging
   buffer the batch is gathered into; the data set resident on the GPU (through
   BatchStream, and with the epoch's order moved to the GPU once); one fixed GPU batch
   (compute alone).
b. The per-step host sync: the same steps without ``bool(isfinite(nll) & isfinite(
   grad_norm))``, and the host syncs per step counted with
   ``torch.cuda.set_sync_debug_mode("warn")``.
c. PixelCNN sampling: the time to sample a batch (one network pass per value and a
   bisection per value), against the network passes alone, and the host syncs per value.
   Rows spread over the image are timed first; the full sample runs when the rows predict
   it fits ``--sample-budget-s``, else the time is extrapolated from them (and says so).

Everything is written to ``--out`` as JSON after each part, so a run cut short keeps what
it measured; a markdown table goes to stdout. On the CPU (``--device cpu``) the sizes are
tiny and the syncs are not counted: that only checks the script runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # a checkout on PYTHONPATH or not: flowtrain from here
    sys.path.insert(0, str(REPO))

from flowtrain.dequant import UniformDequantization  # noqa: E402
from flowtrain.flows.pixelcnn import PixelCNNFlow  # noqa: E402
from flowtrain.flows.realnvp import RealNVP  # noqa: E402
from flowtrain.likelihood import Identity, Preprocessing, negative_log_likelihood  # noqa: E402
from flowtrain.training.batches import BatchStream  # noqa: E402

# RealNVP sizes as in scripts/bench.py (small: the no-argument model on MNIST-sized
# images; full: the paper's 128 filters x 8 blocks on CIFAR-sized ones); tiny: a CPU check.
SIZES = {
    "tiny": {"shape": (1, 8, 8), "realnvp": {"n_filters": 8, "n_blocks": 1}},
    "small": {"shape": (1, 28, 28), "realnvp": {}},
    "full": {"shape": (3, 32, 32), "realnvp": {"n_filters": 128, "n_blocks": 8}},
}
LEVELS, LOGIT_ALPHA = 256, 0.05  # dequant=uniform (auto) for 8-bit images
LR, GRAD_CLIP = 1e-3, 100.0  # train=images, optim=adam
SYNC_MESSAGE = "synchronizing"  # in every warning set_sync_debug_mode("warn") gives


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def significant(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


# --- counting host syncs ------------------------------------------------------------------

def count_syncs(device: torch.device, function: Callable[[], object]
                ) -> tuple[int | None, dict[str, int]]:
    """Host syncs ``function()`` makes, by CUDA's sync debug mode, and where (file:line of
    the Python frame that made each). None on the CPU. The device is synchronized before,
    and the mode is off again before anything else synchronizes."""
    if device.type != "cuda":
        function()
        return None, {}
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    syncs = [w for w in caught if SYNC_MESSAGE in str(w.message)]
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return len(syncs), dict(where.most_common(8))


def sync_counting_works(device: torch.device) -> bool | None:
    """A control: one ``.item()`` must count as one sync, or the counts mean nothing."""
    if device.type != "cuda":
        return None
    probe = torch.ones(1, device=device)
    count, _ = count_syncs(device, lambda: probe.item())
    return count == 1


# --- (a) and (b): the train step and what feeds it -----------------------------------------

class TrainStep:
    """Trainer.train_step for one process in fp32, with the finite check optional."""

    def __init__(self, size: str, device: torch.device, batch: int):
        torch.manual_seed(0)
        shape = SIZES[size]["shape"]
        self.model = RealNVP(shape, **SIZES[size]["realnvp"]).to(device)
        # as build_flow makes it for images: uniform dequantization, the logit, no
        # standardization
        dequantizer = UniformDequantization(LEVELS, logit_alpha=LOGIT_ALPHA, event_shape=shape)
        self.preprocessing = Preprocessing(dequantizer, Identity()).to(device)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=LR)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.keep = slice(0, batch)  # Ranks().batch_slice(batch) on one process
        self.nll_sum = torch.zeros((), device=device)  # LossWindow: the sum stays there
        self.skipped = 0

    def __call__(self, batch: torch.Tensor, check: bool = True) -> torch.Tensor:
        nll = negative_log_likelihood(self.model, self.preprocessing, batch,
                                      keep=self.keep).mean()
        self.optimizer.zero_grad(set_to_none=True)
        nll.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, GRAD_CLIP)
        if not check or bool(torch.isfinite(nll) & torch.isfinite(grad_norm)):
            self.optimizer.step()
            self.nll_sum += nll.detach()
        else:
            self.skipped += 1
        self.scheduler.step()
        return grad_norm.detach()


class GpuOrderStream:
    """The batches BatchStream would draw (same generator, same permutations), from a data
    set on the GPU, with each epoch's order moved there once: no host work per batch."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int):
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._start_epoch()

    def _start_epoch(self) -> None:
        order = torch.randperm(len(self.data), generator=self.generator)
        self._order = order.to(self.data.device)
        self._position = 0

    def next(self) -> torch.Tensor:
        if self._position + self.batch_size > len(self.data):
            self._start_epoch()
        index = self._order[self._position:self._position + self.batch_size]
        self._position += self.batch_size
        return self.data[index]


class PinnedStaging:
    """BatchStream's order (a BatchStream over 0..N-1 yields the indices), gathered on the
    CPU into one of two pinned buffers, then copied without blocking. A buffer is reused
    only once the copy that read it has finished (an event, two steps back)."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, device: torch.device):
        self.data, self.device = data, device
        self.indices = BatchStream(torch.arange(len(data)), batch_size, seed)
        self.buffers = [torch.empty((batch_size, *data.shape[1:]), dtype=data.dtype,
                                    pin_memory=True) for _ in range(2)]
        self.copied = [None, None]
        self.turn = 0

    def next(self) -> torch.Tensor:
        turn, self.turn = self.turn, 1 - self.turn
        if self.copied[turn] is not None:
            self.copied[turn].synchronize()
        torch.index_select(self.data, 0, self.indices.next(), out=self.buffers[turn])
        batch = self.buffers[turn].to(self.device, non_blocking=True)
        self.copied[turn] = torch.cuda.Event()
        self.copied[turn].record()
        return batch


def feeders(cpu_data: torch.Tensor, batch: int, device: torch.device, seed: int = 0
            ) -> dict[str, tuple[Callable[[], torch.Tensor], bool, str]]:
    """name -> (next batch on the device, run the finite check?, what it is)."""
    on_gpu = device.type == "cuda"
    pageable = BatchStream(cpu_data, batch, seed)
    pageable_float = BatchStream(cpu_data.float(), batch, seed)
    resident = cpu_data.to(device)
    through_batchstream = BatchStream(resident, batch, seed)
    gpu_order = GpuOrderStream(resident, batch, seed)
    gpu_order_nocheck = GpuOrderStream(resident, batch, seed)
    pageable_nocheck = BatchStream(cpu_data, batch, seed)
    fixed = BatchStream(cpu_data, batch, seed).next().to(device)
    table = {
        "today": (lambda: pageable.next().to(device, non_blocking=True), True,
                  "BatchStream over a CPU uint8 tensor, .to(device, non_blocking=True) from "
                  "pageable memory (the loop as it is)"),
        "today_float32": (lambda: pageable_float.next().to(device, non_blocking=True), True,
                          "the same over float32 data (4x the bytes)"),
    }
    if on_gpu:
        pinned = BatchStream(cpu_data.pin_memory(), batch, seed)
        staging = PinnedStaging(cpu_data, batch, seed, device)
        table |= {
            "pinned_dataset": (lambda: pinned.next().to(device, non_blocking=True), True,
                               "the data set pinned, BatchStream as is (its gathered batch "
                               "is a new, unpinned tensor)"),
            "pinned_staging": (staging.next, True,
                               "the batch gathered into a pinned double buffer, then copied "
                               "without blocking"),
        }
    table |= {
        "gpu_batchstream": (through_batchstream.next, True,
                            "the data set on the GPU, BatchStream as is (a CPU index into a "
                            "GPU tensor)"),
        "gpu_order": (gpu_order.next, True,
                      "the data set on the GPU, each epoch's order moved there once, the "
                      "batch gathered there"),
        "fixed_batch": (lambda: fixed, True, "one batch already on the GPU: compute alone"),
        "today_no_check": (lambda: pageable_nocheck.next().to(device, non_blocking=True),
                           False, "as today, without the finite check (no per-step sync)"),
        "gpu_order_no_check": (gpu_order_nocheck.next, False,
                               "GPU-resident with the order on the GPU, without the check"),
        "fixed_batch_no_check": (lambda: fixed, False,
                                 "one batch on the GPU, without the check: the floor"),
    }
    return table


def check_gpu_order_matches(cpu_data: torch.Tensor, batch: int) -> bool:
    """GpuOrderStream draws exactly BatchStream's batches (over two epochs)."""
    ours = GpuOrderStream(cpu_data, batch, 0)
    theirs = BatchStream(cpu_data, batch, 0)
    steps = 2 * (len(cpu_data) // batch) + 1
    return all(torch.equal(ours.next(), theirs.next()) for _ in range(steps))


def time_steps(step: TrainStep, feed: Callable[[], torch.Tensor], check: bool, n: int,
               device: torch.device) -> tuple[float, float]:
    """(wall seconds per step, host seconds per step until the last step was issued)."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(n):
        step(feed(), check)
    issued = time.perf_counter()
    synchronize(device)
    ended = time.perf_counter()
    return (ended - started) / n, (issued - started) / n


def measure_train(size: str, args: argparse.Namespace, device: torch.device,
                  deadline: float) -> dict:
    shape = SIZES[size]["shape"]
    generator = torch.Generator().manual_seed(1)
    cpu_data = torch.randint(0, LEVELS, (args.n_images, *shape), dtype=torch.uint8,
                             generator=generator)
    table = feeders(cpu_data, args.batch, device)
    steps = args.steps or (2 if device.type != "cuda" else 10 if size == "full" else 20)
    step = TrainStep(size, device, args.batch)
    for feed, check, _ in table.values():  # warm-up: kernels, allocator, ActNorm init
        for _ in range(args.warmup):
            step(feed(), check)
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in table}
    issue: dict[str, list[float]] = {name: [] for name in table}
    rounds_done = 0
    for _ in range(args.rounds):  # interleaved, so drift hits every variant alike
        if rounds_done and time.monotonic() > deadline:
            break
        for name, (feed, check, _) in table.items():
            step(feed(), check)  # one untimed step after switching variant
            wall, host = time_steps(step, feed, check, steps, device)
            times[name].append(wall)
            issue[name].append(host)
        rounds_done += 1
    feed_only = {}  # the feed alone, no step: what the data path costs by itself
    for name, (feed, _, _) in table.items():
        synchronize(device)
        began = time.perf_counter()
        for _ in range(steps):
            feed()
        synchronize(device)
        feed_only[name] = (time.perf_counter() - began) / steps
    sync_ok = sync_counting_works(device)
    baseline = statistics.median(times["today"])
    rows = []
    for name, (feed, check, what) in table.items():
        syncs, where = count_syncs(device, lambda feed=feed, check=check: [
            step(feed(), check) for _ in range(args.sync_steps)])
        wall = statistics.median(times[name])
        rows.append({
            "size": size, "shape": "x".join(map(str, shape)), "batch": args.batch,
            "variant": name, "what": what, "finite_check": check,
            "ms_per_step": significant(1e3 * wall),
            "ms_per_step_rounds": [significant(1e3 * t) for t in times[name]],
            "host_issue_ms_per_step": significant(1e3 * statistics.median(issue[name])),
            "feed_only_ms": significant(1e3 * feed_only[name]),
            "images_per_s": significant(args.batch / wall),
            "time_vs_today": significant(wall / baseline),
            "speedup_vs_today": significant(baseline / wall),
            "syncs_per_step": None if syncs is None else syncs / args.sync_steps,
            "sync_sites": where,
        })
    return {"size": size, "rounds": rounds_done, "steps_per_round": steps,
            "sync_counting_control_ok": sync_ok, "skipped_steps": step.skipped,
            "gpu_order_matches_batchstream": check_gpu_order_matches(cpu_data, args.batch),
            "rows": rows}


# --- (c) PixelCNN sampling -----------------------------------------------------------------

def only_rows(transform, rows: set[int]):
    """The transform's fill order cut to ``rows`` (values at (.., c, i, j), i in rows):
    its own sampling loop then fills only those rows, the rest staying zero."""
    original = type(transform).fill_order

    def fill_order(shape):
        return (item for item in original(transform, shape) if item[0][2] in rows)

    return fill_order


def network_passes(transform, x: torch.Tensor, rows: set[int]) -> None:
    """The network passes of those rows' values alone: what sampling costs if inverting
    each value's CDF were free."""
    with torch.no_grad():
        for _, visible in only_rows(transform, rows)(x.shape):
            transform.mixture(x[visible])


def timed(function: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def per_row_extrapolation(seconds_at: dict[int, float], height: int) -> float:
    """The whole image's time from rows timed at a few heights, linear between them (a row
    lower down passes more rows through the network)."""
    known = sorted(seconds_at)
    total = 0.0
    for row in range(height):
        below = max([k for k in known if k <= row], default=known[0])
        above = min([k for k in known if k >= row], default=known[-1])
        if above == below:
            total += seconds_at[below]
        else:
            weight = (row - below) / (above - below)
            total += (1 - weight) * seconds_at[below] + weight * seconds_at[above]
    return total


def measure_sampling(shape: tuple[int, int, int], args: argparse.Namespace,
                     device: torch.device, deadline: float) -> dict:
    channels, height, width = shape
    torch.manual_seed(0)
    model = PixelCNNFlow(shape, **({"n_filters": args.pixelcnn_filters,
                                     "n_blocks": args.pixelcnn_blocks}
                                    if args.pixelcnn_filters else {})).to(device).eval()
    transform = model.transforms[0]
    n = args.pixelcnn_n
    values = channels * height * width
    rows = sorted({0, height // 4, height // 2, (3 * height) // 4, height - 1})
    x = torch.zeros((n, *shape), device=device)
    with torch.no_grad():  # warm-up before the clock
        transform.mixture(x)
        transform.fill_order = only_rows(transform, {0})
        try:
            model.sample(n)
        finally:
            del transform.fill_order
    sample_at, net_at = {}, {}
    for row in rows:
        transform.fill_order = only_rows(transform, {row})
        try:
            sample_at[row] = timed(lambda: model.sample(n), device)
        finally:
            del transform.fill_order
        net_at[row] = timed(lambda row=row: network_passes(transform, x, {row}), device)
    estimate = per_row_extrapolation(sample_at, height)
    net_estimate = per_row_extrapolation(net_at, height)
    result = {
        "shape": "x".join(map(str, shape)), "n": n, "values": values,
        "model_args": ({"n_filters": args.pixelcnn_filters, "n_blocks": args.pixelcnn_blocks}
                       if args.pixelcnn_filters else "PixelCNNFlow's defaults"),
        "params": sum(p.numel() for p in model.parameters()),
        "rows_timed": rows,
        "row_seconds": {str(k): significant(v) for k, v in sample_at.items()},
        "row_network_only_seconds": {str(k): significant(v) for k, v in net_at.items()},
        "estimated_sample_s": significant(estimate),
        "estimated_network_only_s": significant(net_estimate),
    }
    left = deadline - time.monotonic()
    if estimate <= min(args.sample_budget_s, left):
        measured = timed(lambda: model.sample(n), device)
        result |= {"sample_s": significant(measured), "extrapolated": False,
                   "estimate_error": significant(estimate / measured - 1)}
    else:
        measured = estimate
        result |= {"sample_s": significant(estimate), "extrapolated": True,
                   "why": f"predicted {estimate:.1f} s > budget "
                          f"{min(args.sample_budget_s, left):.1f} s: extrapolated from "
                          f"rows {rows}"}
    result |= {
        "ms_per_value": significant(1e3 * measured / values),
        "network_only_ms_per_value": significant(1e3 * net_estimate / values),
        # both from the same rows, so the ratio is like for like
        "time_vs_network_only": significant(estimate / net_estimate),
        "samples_per_s": significant(n / measured),
    }
    # syncs in one row of values (the middle one), by the real sampler
    middle = height // 2
    transform.fill_order = only_rows(transform, {middle})
    try:
        syncs, where = count_syncs(device, lambda: model.sample(n))
        result |= {"syncs_per_value": None if syncs is None else syncs / (width * channels),
                   "sync_sites": where}
        if hasattr(model, "sample_ancestral"):
            syncs, where = count_syncs(device, lambda: model.sample_ancestral(n))
            result |= {"ancestral_syncs_per_value":
                       None if syncs is None else syncs / (width * channels),
                       "ancestral_sync_sites": where}
    finally:
        del transform.fill_order
    return result


# --- report ----------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    lines = [f"# GPU step costs\n\n{report['device']}; torch {report['torch']}; "
             f"{report['date']}. `scripts/gpu_step_costs.py`.\n",
             "## Train step: data path and the per-step sync\n",
             "`host ms/step`: until the last step was issued (close to ms/step: the host "
             "is the bottleneck); `feed ms`: the batch alone, no step.\n",
             "| size | variant | check | ms/step | host ms/step | feed ms | images/s | "
             "time vs today | syncs/step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for part in report["train"]:
        if "error" in part:
            lines.append(f"| {part['size']} | failed: {part['error'][:120]} | | | | | | | |")
            continue
        for row in part["rows"]:
            lines.append(f"| {row['size']} ({row['shape']}, batch {row['batch']}) | "
                         f"{row['variant']} | {'yes' if row['finite_check'] else 'no'} | "
                         f"{row['ms_per_step']} | {row['host_issue_ms_per_step']} | "
                         f"{row['feed_only_ms']} | "
                         f"{row['images_per_s']} | {row['time_vs_today']}x | "
                         f"{row['syncs_per_step']} |")
    lines += ["\n## PixelCNN sampling\n",
              "| shape | n | values | sample s | extrapolated | ms/value | network-only "
              "ms/value | time vs network only | syncs/value | ancestral syncs/value |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["sampling"]:
        if "error" in row:
            lines.append(f"| {row['shape']} | failed: {row['error'][:120]} | | | | | | | | |")
            continue
        lines.append(f"| {row['shape']} | {row['n']} | {row['values']} | {row['sample_s']} | "
                     f"{'yes' if row['extrapolated'] else 'no'} | {row['ms_per_value']} | "
                     f"{row['network_only_ms_per_value']} | {row['time_vs_network_only']}x | "
                     f"{row.get('syncs_per_value')} | "
                     f"{row.get('ancestral_syncs_per_value')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="of tiny,small,full (default: small,full "
                        "on a GPU, tiny on the CPU)")
    parser.add_argument("--batch", type=int, default=None, help="64 (16 on the CPU)")
    parser.add_argument("--n-images", type=int, default=None, help="10000 (256 on the CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant and "
                        "round: 20 at the small size, 10 at the full one (2 on the CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="3 (1 on the CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sync-steps", type=int, default=3)
    parser.add_argument("--pixelcnn-shapes", default=None,
                        help="CxHxW,... (1x28x28,3x32x32 on a GPU, 1x6x6 on the CPU)")
    parser.add_argument("--pixelcnn-n", type=int, default=None, help="samples: 8 (2 on the CPU)")
    parser.add_argument("--pixelcnn-filters", type=int, default=None,
                        help="with --pixelcnn-blocks: another size than the model's defaults")
    parser.add_argument("--pixelcnn-blocks", type=int, default=None)
    parser.add_argument("--sample-budget-s", type=float, default=20.0,
                        help="the longest full sample to time; longer ones are extrapolated")
    parser.add_argument("--budget-s", type=float, default=75.0,
                        help="stop starting new rounds and parts after this many seconds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    sizes = (args.sizes or ("small,full" if gpu else "tiny")).split(",")
    args.batch = args.batch or (64 if gpu else 16)
    args.n_images = args.n_images or (10000 if gpu else 256)
    args.rounds = args.rounds or (3 if gpu else 1)
    args.pixelcnn_n = args.pixelcnn_n or (8 if gpu else 2)
    shapes = [tuple(int(v) for v in s.split("x")) for s in
              (args.pixelcnn_shapes or ("1x28x28,3x32x32" if gpu else "1x6x6")).split(",")]
    started = time.monotonic()
    deadline = started + args.budget_s
    report = {
        "device": (torch.cuda.get_device_name(device) if gpu
                   else f"CPU ({torch.get_num_threads()} threads, {platform.machine()})"),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if gpu else None,
        "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train": [], "sampling": [], "skipped": [],
    }

    def save() -> None:
        report["seconds"] = round(time.monotonic() - started, 1)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")

    for size in sizes:
        if time.monotonic() > deadline:
            report["skipped"].append(f"train {size}: out of time")
            continue
        try:
            report["train"].append(measure_train(size, args, device, deadline))
        except Exception as error:  # one failed part must not lose the others
            traceback.print_exc()
            report["train"].append({"size": size, "error": f"{type(error).__name__}: {error}"})
        print(f"[{time.monotonic() - started:.0f} s] train {size} done", flush=True)
        save()
    for shape in shapes:
        if time.monotonic() > deadline:
            report["skipped"].append(f"sampling {shape}: out of time")
            continue
        try:
            report["sampling"].append(measure_sampling(shape, args, device, deadline))
        except Exception as error:
            traceback.print_exc()
            report["sampling"].append({"shape": "x".join(map(str, shape)),
                                       "error": f"{type(error).__name__}: {error}"})
        print(f"[{time.monotonic() - started:.0f} s] sampling {shape} done", flush=True)
        save()
    save()
    print(markdown(report))
    if report["skipped"]:
        print("skipped (out of time):", "; ".join(report["skipped"]))
    failed = [p for p in report["train"] + report["sampling"] if "error" in p]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
