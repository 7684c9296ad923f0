"""`edgespec devices`: list device profiles, show one with its sources, and project a bundle's
decoding speed and chain-drafting speedup on each from the cost model (devices/)."""

from __future__ import annotations

import sys
from pathlib import Path

from .arg_types import add_batch_invariant, add_provider, integer, number
from edgespec.files import check_outside, check_writable_folder


def _show(p) -> None:
    print(f"{p.name}: {p.description}")
    for key in ("kind", "memory_bandwidth_gbs", "peak_fp16_tflops", "memory_gb",
                "unified_memory", "provider", "kv_dtype"):
        print(f"  {key}: {getattr(p, key)}")
    for key, src in p.sources.items():
        print(f"  source of {key}: {src}")


def cmd_devices(ns) -> int:
    from edgespec.devices.profiles import list_profiles, load_profile

    if ns.name and not ns.bundle:
        _show(load_profile(ns.name))
        return 0
    names = [ns.name] if ns.name else list_profiles()
    profiles = [load_profile(n) for n in names]
    if not ns.bundle:
        print(f"{'profile':<22}{'kind':>5}{'GB/s':>9}{'fp16 TFLOPS':>13}{'memory GB':>11}"
              f"{'provider':>10}")
        for p in profiles:
            print(f"{p.name:<22}{p.kind:>5}{p.memory_bandwidth_gbs:>9.1f}"
                  f"{p.peak_fp16_tflops:>13.2f}{p.memory_gb:>11.1f}{p.provider:>10}")
        return 0
    from edgespec.devices.projection import project

    rows = project(ns.bundle, profiles, ns.drafter, ns.eval, ns.context, ns.overhead_ms)
    print(f"projected for {ns.bundle} at a {ns.context}-token context, {ns.overhead_ms} ms per "
          "forward of overhead, fp16 weights and K/V on GPUs (peak bandwidth and throughput: "
          "an upper bound on speed)")
    head = f"{'profile':<22}{'AR ms/token':>12}{'T(8)/T(1)':>11}"
    print(head + (f"{'best gamma':>12}{'speedup':>9}" if ns.eval else ""))
    for r in rows:
        line = f"{r['device']:<22}{r['ar_ms_per_token']:>12.3f}{r['verify_8_vs_1']:>11.2f}"
        if "best_gamma" in r:
            line += f"{r['best_gamma']:>12}{r['speedup']:>9.2f}"
        print(line)
    return 0


def cmd_bench(ns) -> int:
    from importlib import resources

    from edgespec.runtime.evaluate import read_prompts
    from edgespec.runtime.model import Model
    from edgespec.runtime.providers import SessionConfig

    from edgespec.devices.bench import bench, markdown, write
    from edgespec.devices.profiles import load_profile

    check_outside(ns.out, "-o", bundle=ns.bundle, prompts_file=ns.prompts)
    check_writable_folder(Path(ns.out), ("bench.json", "bench.md", "bench.png"))
    provider = load_profile(ns.device).provider if ns.device else ns.provider
    model = Model(ns.bundle, SessionConfig(provider=provider, threads=ns.threads,
                                           cuda_graphs=ns.cuda_graphs,
                                           batch_invariant=ns.batch_invariant))
    source = ns.prompts or resources.files("edgespec.devices") / "prompts.jsonl"
    prompts = [model.tokenizer.encode(r["prompt"])
               for r in read_prompts(source)[: ns.limit or None]]
    gammas = [int(g) for g in ns.gammas.split(",") if g.strip()]
    trees = [int(n) for n in ns.tree_sizes.split(",") if n.strip()]
    if ns.drafter and (not gammas and not trees or min(gammas + trees) < 1):
        raise ValueError(f"--gammas {ns.gammas!r} --tree-sizes {ns.tree_sizes!r}: give draft "
                         "lengths or tree sizes >= 1, e.g. --gammas 1,2,3,4")
    r = bench(model, ns.drafter, prompts, gammas, ns.runs, ns.max_new_tokens,
              tree_sizes=trees)
    files = write(r, Path(ns.out))
    print(markdown(r))
    print("wrote " + ", ".join(map(str, files)))
    if not any(str(f).endswith(".png") for f in files):
        print("edgespec bench: no bench.png: the plot needs matplotlib "
              "(pip install 'edgespec[export]')", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    d = sub.add_parser("devices", help="device profiles; with --bundle, projected speed on each")
    d.add_argument("name", nargs="?", help="one profile (default: all); `cpu` probes this host")
    d.add_argument("--bundle", help="project this bundle's decoding on the profile(s)")
    d.add_argument("--drafter", help="with --eval: the chain drafter the eval ran")
    d.add_argument("--eval", help="`edgespec eval` results of that drafter (per-depth "
                                  "acceptance comes from its accepted_lengths)")
    d.add_argument("--context", type=integer(1), default=512, help="tokens in the KV cache")
    d.add_argument("--overhead-ms", type=number(), default=0.1,
                   help="assumed fixed cost per forward (launches; CUDA graphs shrink it)")
    d.set_defaults(fn=cmd_devices)

    b = sub.add_parser("bench", help="cost curve, decode rates per draft length, tau, TTFT, "
                                     "memory on this device (json, markdown, PNG)")
    b.add_argument("bundle")
    b.add_argument("--drafter", help="a chain drafter to bench at --gammas (default: plain only)")
    b.add_argument("--gammas", default="1,2,3,4", help="draft lengths (comma-separated; '' "
                                                         "for none)")
    b.add_argument("--tree-sizes", default="", help="tree sizes of a medusa / eagle3 drafter "
                                                    "(comma-separated), e.g. 4,8,16,32")
    b.add_argument("--prompts", help="jsonl with a 'prompt' field (default: shipped prompts)")
    b.add_argument("--limit", type=integer(0), default=8, help="first N prompts (0 = all)")
    b.add_argument("--runs", type=integer(1), default=3, help="runs; medians with min and max")
    b.add_argument("--max-new-tokens", type=integer(1), default=64)
    b.add_argument("--device", help="a device profile: its provider is used")
    add_provider(b)
    b.add_argument("--threads", type=integer(0), default=0)
    add_batch_invariant(b)
    b.add_argument("--cuda-graphs", default="auto", choices=("auto", "on", "off"),
                   help="CUDA graph per verify shape (auto: on --provider cuda, bundles "
                        "with static shapes: the default)")
    b.add_argument("-o", "--out", default="bench", help="folder for bench.json / .md / .png")
    b.set_defaults(fn=cmd_bench)
