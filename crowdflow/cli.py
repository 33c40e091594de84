"""`crowdflow` — one command, a subcommand per service."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .site import ConfigError, Site, load_site

DEFAULT_CONFIG = "configs/hongyadong.yaml"
log = logging.getLogger("crowdflow")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .redact import install

    install()  # credentials in URLs (rtsp://user:pw@…) never reach a log line


def _load(args) -> Site:
    try:
        return load_site(args.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _camera(site: Site, camera_id: str):
    try:
        return site.camera(camera_id)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        raise SystemExit(2) from None


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def data_dir() -> Path:
    return Path(os.environ.get("CROWDFLOW_DATA_DIR", "var"))


def open_redis(site: Site, wait_s: float | None = 15):
    """(client, url, keys, embedded-or-None). Without REDIS_URL an embedded server is used."""
    from .bus import EmbeddedRedis, Keys, connect, is_cluster_url, resolve_prefix, resolve_url, wait_until_up

    url = resolve_url(site.redis.url)
    prefix = resolve_prefix(site.redis.prefix)
    if is_cluster_url(url) and not site.control.partitions and "{" not in prefix:
        # One fenced MULTI/EXEC touches all of control's keys: on a cluster they need one slot.
        raise SystemExit(f"redis prefix {prefix!r} has no hash tag: on a Redis Cluster use e.g. "
                         f"'{prefix}:{{site}}' or set control.partitions (docs/scaling.md)")
    embedded = None
    if url is None:
        embedded = EmbeddedRedis(data_dir() / "redis")
        url = embedded.url
        log.info("no REDIS_URL: using embedded redis at %s", url)
    r = connect(url)
    if wait_s:
        wait_until_up(r, timeout_s=wait_s)
    return r, url, Keys(prefix), embedded


# ----------------------------------------------------------------------------- subcommands


def cmd_check_config(args) -> int:
    try:
        site = load_site(args.file)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    cap = sum(z.capacity for z in site.zones)
    area = sum(z.walkable_area_m2 for z in site.zones)
    print(f"{args.file}: OK — site {site.site.id} ({site.site.name.zh}), CRS {site.site.crs}")
    print(f"  zones   {len(site.zones):3d}  walkable {area:,.0f} m², capacity {cap:,} people (LB/T 034-2014)")
    print(f"  cameras {len(site.cameras):3d}  presets {sum(len(c.presets) for c in site.cameras)}")
    print(f"  gates   {len(site.gates):3d}  roads {len(site.roads)}  posts {len(site.posts)}")
    for p in site.plans:
        print(f"  plan {p.id}: {len(p.zones)} zones, levels {' → '.join(lv.level for lv in p.levels)}")
    from crowdflow.site import semantic_warnings

    for path, msg in semantic_warnings(site):
        print(f"warning: {path}: {msg}")
    return _check_osm(site, args)


def _check_osm(site, args) -> int:
    """The zones against the OpenStreetMap extract they are drawn on (site.osm.file, $CROWDFLOW_OSM
    or --osm): every zone lies on the OSM elements it names (checks.OSM_CHECKS)."""
    from crowdflow.site.checks import OSM_CHECKS
    from crowdflow.site.osm import load_osm, osm_path

    given = getattr(args, "osm", None)
    path = osm_path(site, Path(args.file).resolve().parent, given)
    if path is None:
        return 0
    if not path.exists():
        if given:
            print(f"{path}: no such OSM extract", file=sys.stderr)
            return 1
        print(f"note: OSM extract {path} not found; zones not checked against OpenStreetMap")
        return 0
    try:
        osm = load_osm(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    problems = [p for check in OSM_CHECKS for p in check(site, osm)]
    if problems:
        print(str(ConfigError(f"{args.file} against {path.name}", problems)), file=sys.stderr)
        return 1
    print(f"  osm     {len(site.zones)} zones and {sum(1 for r in site.roads if r.osm)} roads lie on the OSM elements "
          f"they name (within {site.site.osm.tolerance_m:g} m; {path.name}, © OpenStreetMap contributors)")
    return 0


def _planner_factory(site, twin: str | None):
    """The measures engine's planner for ``crowdflow control --twin SCENARIO`` (issue 11): the
    site simulator as the planning twin, decisions on a worker thread. None without --twin or
    when the site declares no measures (the plans then act by level bundles)."""
    twin = twin or os.environ.get("CROWDFLOW_TWIN")
    if not twin or not site.measures:
        return None
    from control.measures import BackgroundPlanner, MeasurePlanner
    from sim.plantwin import ModelTwin
    from sim.scenario import load_scenario

    sc, _ = load_scenario(twin, site)
    tod = twin_tod()
    return lambda: BackgroundPlanner(MeasurePlanner(site, ModelTwin(site, sc), tod=tod))


def twin_tod():
    """CROWDFLOW_TWIN_TOD=HH:MM: the twin plans from that time of day whatever the clock says
    (drills, and the demo, whose simulator plays its own evening); unset: the site's clock."""
    fixed = os.environ.get("CROWDFLOW_TWIN_TOD")
    if not fixed:
        return None
    from sim.scenario import hhmm_to_s

    t = hhmm_to_s(fixed)
    return lambda now: t


def cmd_control(args) -> int:
    from control.service import ControlService

    site = _load(args)
    r, url, keys, embedded = open_redis(site, wait_s=None)  # control waits for Redis as long as it takes
    audit_dir = args.audit_dir or os.environ.get("CROWDFLOW_AUDIT_DIR") or str(data_dir() / "audit")
    from .bus import load_edge_keys

    from .credentials import default_keys_file

    env = dict(os.environ)
    if not env.get("CROWDFLOW_EDGE_KEYS") and not env.get("CROWDFLOW_EDGE_KEYS_FILE") \
            and default_keys_file(data_dir()).exists():  # what `crowdflow edge-users` wrote
        env["CROWDFLOW_EDGE_KEYS_FILE"] = str(default_keys_file(data_dir()))
    try:
        edge_keys = load_edge_keys(env)
    except (ValueError, OSError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if edge_keys is None and site.control.edge_keys == "required":
        print("error: control.edge_keys is 'required' but there are no edge keys: run `crowdflow edge-users` "
              f"(writes {default_keys_file(data_dir())}) or set CROWDFLOW_EDGE_KEYS_FILE", file=sys.stderr)
        return 2
    if edge_keys is None:
        log.warning("no edge keys (`crowdflow edge-users`, CROWDFLOW_EDGE_KEYS_FILE): records are not checked "
                    "against their camera's edge user")
    else:
        log.info("records checked against %d cameras' edge keys", len(edge_keys))
    audit_dir = None if audit_dir == "none" else audit_dir
    if site.control.partitions:  # one worker of N sharing the partitions (control/workers.py)
        from control.workers import Worker

        svc = Worker(site, r, keys, worker_id=args.consumer, stale_after_s=args.stale_after, audit_dir=audit_dir,
                     edge_keys=edge_keys, planner_factory=_planner_factory(site, args.twin))
    else:
        svc = ControlService(site, r, keys, consumer=args.consumer, stale_after_s=args.stale_after,
                             lease_ms=site.control.lease_ms, audit_dir=audit_dir, edge_keys=edge_keys,
                             planner_factory=_planner_factory(site, args.twin))
    from control.service import tune_gc

    tune_gc()  # the site is loaded: keep it out of the collector's passes
    port = args.metrics_port or int(os.environ.get("CROWDFLOW_CONTROL_METRICS_PORT", "0") or 0)
    if port:  # a partitioned worker labels every family by partition (control/metrics.py)
        from control.metrics import ControlMetrics

        ControlMetrics(svc).serve(port)
        log.info("metrics on :%d/metrics", port)
    try:
        svc.run(_stop_event())
    finally:
        if embedded:
            embedded.close()
    return 0


def cmd_dashboard(args) -> int:
    import uvicorn

    from dashboard.app import create_app

    from dashboard.auth import AuthError

    site = _load(args)
    r, url, keys, embedded = open_redis(site)
    r.close()
    try:
        app = create_app(site, url, keys, config_dir=Path(args.config).resolve().parent)
    except AuthError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    host = args.host or site.dashboard.host
    port = args.port or site.dashboard.port
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if embedded:
            embedded.close()
    return 0


def cmd_edge_users(args) -> int:
    """Create or update one Redis ACL user and signing key per camera (crowdflow/credentials.py)."""
    from .bus import is_cluster_url, mask_url
    from .credentials import provision

    site = _load(args)
    r, url, keys, embedded = open_redis(site)
    if embedded is not None:
        embedded.close()
        print("error: set REDIS_URL to the site's Redis (an admin user): edge users live there", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else data_dir() / "edge-credentials"
    try:
        creds = provision(r, site, keys, out, args.edge_url or url, rotate=args.rotate, cameras=args.camera or None,
                          cluster=is_cluster_url(url))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for cam in sorted(args.camera or creds):
        print(f"{cam}: user {creds[cam]['user']} -> {out / (cam + '.env')}")
    print(f"control: {out / 'edge-keys.json'} (its default; copy the .env files to the gateways, "
          f"Redis at {mask_url(args.edge_url or url)})")
    return 0


def cmd_hash_password(args) -> int:
    """Print a salted scrypt hash for ``dashboard.users[].password_hash`` / CROWDFLOW_USERS."""
    import getpass

    from dashboard.auth import AuthError, hash_password

    if sys.stdin.isatty():
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            print("error: the two passwords differ", file=sys.stderr)
            return 2
    else:
        pw = sys.stdin.readline().rstrip("\n")
    try:
        print(hash_password(pw))
    except AuthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_edge(args) -> int:
    from edge.agent import EdgeAgent
    from edge.counter import CounterSettings, CrowdCounter
    from edge.density import DensityModelError, open_density_model
    from edge.detector import PersonDetector, resolve_model
    from edge.grabber import FrameGrabber
    from edge.metrics import EdgeMetrics, use_json_logs
    from edge.source import is_file_source
    from edge.spool import Publisher, Spool

    if args.log_json or os.environ.get("CROWDFLOW_LOG_FORMAT") == "json":
        use_json_logs()
    site = _load(args)
    from .bus import Keys, connect, mask_url, resolve_prefix, resolve_url

    url = resolve_url(site.redis.url)
    if url is None:
        # An embedded Redis on a gateway would keep its observations to itself: refuse.
        print("error: the edge agent needs the control site's Redis: set REDIS_URL (or redis.url in the "
              "site file); it never starts an embedded one", file=sys.stderr)
        return 2
    camera = _camera(site, args.camera)
    uri = args.source or camera.source
    if not uri:
        print(f"error: camera {camera.id} has no source; pass --source or set cameras[].source", file=sys.stderr)
        return 2
    if is_file_source(uri) and not Path(uri).exists():
        print(f"error: video not found: {uri}", file=sys.stderr)
        return 2
    try:
        model = resolve_model(site.edge.model, args.model)
        detector = PersonDetector(model, site.edge.imgsz, site.edge.conf)
        density = open_density_model(site.edge.density_model, args.density_model, model, threads=2)
    except (FileNotFoundError, DensityModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if density is None:
        log.warning("no density model (edge.density_model / CROWDFLOW_DENSITY_MODEL): dense crowds are undercounted")
    else:
        log.info("density model: %s", density.path)
    grabber = FrameGrabber(uri, realtime=not args.fast, loop=args.loop, max_backoff_s=site.edge.reconnect_max_s)
    # No wait for Redis: the agent counts and spools from the first frame, and replays when
    # Redis answers (edge/spool.py).
    r, keys, embedded = connect(url), Keys(resolve_prefix(site.redis.prefix)), None
    log.info("edge %s publishes to %s", camera.id, mask_url(url))
    spool_path = args.spool or (site.edge.spool_path or str(data_dir() / "edge-spool-{camera}.sqlite"))
    spool = Spool(spool_path.format(camera=camera.id), site.edge.spool_max_records)
    metrics = EdgeMetrics(camera.id)
    port = args.metrics_port or site.edge.metrics_port
    if port:
        metrics.serve(port)
        log.info("metrics on :%d/metrics", port)
    counter = CrowdCounter(detector, density, CounterSettings(target_px=site.edge.tile_target_px,
                                                              dense_per_m2=site.edge.dense_per_m2))
    try:
        from .site.partitions import camera_keys

        keys = camera_keys(site, keys).get(camera.id, keys)  # its partition's stream (docs/scaling.md)
        publisher = Publisher(r, keys, spool, signing_key=os.environ.get("CROWDFLOW_EDGE_KEY"))
        agent = EdgeAgent(site, camera.id, grabber, counter, publisher, preset=args.preset, metrics=metrics,
                          config_dir=Path(args.config).parent)
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        spool.close()
        if embedded:
            embedded.close()
        return 2
    try:
        agent.run(_stop_event(), max_frames=args.max_frames)
    finally:
        spool.close()
        if embedded:
            embedded.close()
    log.info("edge %s done: %d frames, %d observations", camera.id, agent.frames_done, agent.observations)
    return 0


def cmd_count(args) -> int:
    from edge.counter import CounterSettings, CrowdCounter
    from edge.density import DensityModelError, open_density_model
    from edge.detector import PersonDetector, resolve_model
    from edge.offline import InputError, run_count

    model = resolve_model(None, args.model)
    layout = None
    try:
        detector = PersonDetector(model, args.imgsz, args.conf)
        density = open_density_model(None, args.density_model, model, threads=args.threads)
        if args.mode in ("auto", "density") and density is None:
            if args.mode == "density":
                raise DensityModelError("--mode density needs a density model (--density-model or CROWDFLOW_DENSITY_MODEL)")
            log.warning("no density model (--density-model / CROWDFLOW_DENSITY_MODEL): detection only")
        counter = CrowdCounter(detector, density, CounterSettings())
        if args.camera:  # count that camera's zones with its calibration, as its agent does
            from edge.adapt import adapted_head
            from edge.geometry import CameraGeometry
            from edge.offline import iter_frames

            site = _load(args)
            camera = _camera(site, args.camera)
            preset = camera.preset(args.preset)
            geo = CameraGeometry(site, camera, preset)
            _, it = iter_frames(args.input)
            first = next(it)[2]
            head = adapted_head(Path(args.config).parent, camera.id, preset.id, counter)
            if head is not None:
                counter = CrowdCounter(detector, head, counter.s)
            counter.s = CounterSettings(target_px=site.edge.tile_target_px, dense_per_m2=site.edge.dense_per_m2)
            layout = counter.layout(geo, (first.shape[1], first.shape[0]))
        run_count(args.input, counter, args.json, limit=args.limit, mode=args.mode, csv_path=args.csv,
                  json_path=args.json_out, annotate_to=args.annotate, layout=layout)
    except (InputError, FileNotFoundError, DensityModelError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    return 0


def cmd_calibrate(args) -> int:
    import cv2

    from edge.calibrate import PointPair, check, grid_image, read_points, write_points
    from edge.geometry import CameraGeometry
    from edge.offline import InputError, iter_frames

    site = _load(args)
    camera = _camera(site, args.camera)
    existing = next((p for p in camera.presets if p.id == args.preset), None)
    frame = None
    if args.frame:
        try:
            _, it = iter_frames(args.frame)
            frame = next(it)[2]
        except (InputError, StopIteration) as e:
            print(f"error: {e or 'no frame in ' + args.frame}", file=sys.stderr)
            return 2
    size = (frame.shape[1], frame.shape[0]) if frame is not None else (existing.image_size if existing else None)
    if size is None:
        print("error: give --frame (an image or video of the view) to know the image size", file=sys.stderr)
        return 2
    try:
        points = read_points(args.points, args.point)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    given = bool(points)
    if not points and existing is not None:
        points = [PointPair(tuple(p.pixel), tuple(p.lonlat)) for p in existing.points]
        print(f"checking the {len(points)} points already in {camera.id}/{args.preset}")
    if args.save_reference and frame is None:
        print("error: --save-reference needs --frame (the view to store)", file=sys.stderr)
        return 2
    if args.grid and frame is not None:
        zones_px = None
        if existing is not None:
            geo = CameraGeometry(site, camera, existing)
            zones_px = [v.image_polygon * [size[0] / existing.image_size[0], size[1] / existing.image_size[1]]
                        for v in geo.zones.values()]
        cv2.imwrite(args.grid, grid_image(frame, points=points, zones_px=zones_px))
        print(f"wrote {args.grid}: read pixel positions of ground marks off its grid")
    if not points and not args.save_reference:
        print("no points: give --points FILE.csv (u,v,lon,lat) or --point u,v,lon,lat (≥5)", file=sys.stderr)
        return 2 if not args.grid else 0
    if points:
        rep = check(site, points, size, args.max_rms, args.max_point_error)
        print(f"{camera.id}/{args.preset} at {size[0]}x{size[1]}, {len(points)} points")
        print(rep.text())
        if not rep.ok:
            return 1
    elif existing is None:
        print(f"error: {camera.id} has no preset {args.preset!r} yet: give its points first", file=sys.stderr)
        return 2
    ref = None
    if args.save_reference:
        from edge.calibrate import save_reference
        from edge.viewcheck import ViewUnverifiable

        try:
            ref = save_reference(args.out or args.config, camera.id, args.preset, frame)
        except (ViewUnverifiable, OSError) as e:
            print(f"error: reference view not stored: {e}", file=sys.stderr)
            return 1
        print(f"reference view stored: {ref} (beside {args.out or args.config})")
    if args.write or args.out:
        try:
            target = write_points(args.config, camera.id, args.preset, size, points if given else None,
                                  out=args.out, reference_image=ref)
        except (ValueError, ConfigError) as e:
            print(f"error: not written: {e}", file=sys.stderr)
            return 1
        print(f"wrote preset {args.preset} of {camera.id} to {target}"
              + ("" if given else " (its reference view only; the points are unchanged)"))
    elif ref:
        print(f"add it to presets[].reference_image of {camera.id}/{args.preset}, or run again with --write")
    return 0


def cmd_adapt(args) -> int:
    from edge.adapt import AdaptRefused, AdaptSettings, adapt, read_hand_counts
    from edge.counter import CounterSettings, CrowdCounter
    from edge.density import DensityModelError, open_density_model
    from edge.detector import PersonDetector, resolve_model
    from edge.geometry import CameraGeometry
    from edge.offline import InputError

    site = _load(args)
    camera = _camera(site, args.camera)
    try:
        preset = camera.preset(args.preset)
        source = args.source or camera.source
        if not source:
            raise InputError(f"camera {camera.id} has no source; pass --source")
        model = resolve_model(site.edge.model, args.model)
        detector = PersonDetector(model, site.edge.imgsz, site.edge.conf)
        density = open_density_model(site.edge.density_model, args.density_model, model, threads=args.threads)
        if density is None:
            raise DensityModelError("adaptation needs a density head (edge.density_model / --density-model)")
        counter = CrowdCounter(detector, density, CounterSettings(target_px=site.edge.tile_target_px,
                                                                  dense_per_m2=site.edge.dense_per_m2))
        geo = CameraGeometry(site, camera, preset)
        layouts = {}

        def layout_for(img):
            key = (img.shape[1], img.shape[0])
            if key not in layouts:
                layouts[key] = counter.layout(geo, key)
            return layouts[key]

        settings = AdaptSettings(frames=args.frames, max_minutes=args.max_minutes, epochs=args.epochs)
        rep = adapt(counter, layout_for, source, camera.id, preset.id, Path(args.config).parent,
                    read_hand_counts(args.hand_counts), settings, progress=not args.no_progress)
    except AdaptRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    except (InputError, FileNotFoundError, DensityModelError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(rep.text())
    return 0 if rep.stored else 1


def _load_scenario(args):
    from sim.scenario import load_scenario

    try:
        site = load_site(args.config) if args.config else None
        return load_scenario(args.scenario, site)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_sim(args) -> int:
    from sim.runner import SimRunner
    from sim.scenario import hhmm_to_s

    sc, site = _load_scenario(args)
    known = [c.id for c in site.cameras]
    cams = args.camera or known
    for c in cams + (args.exclude or []):
        if c not in known:
            print(f"error: no camera {c!r} in the site config (known: {', '.join(known)})", file=sys.stderr)
            return 2
    cams = [c for c in cams if c not in (args.exclude or [])]
    if not cams:
        print("error: no camera left to simulate", file=sys.stderr)
        return 2
    try:
        start = hhmm_to_s(args.start) if args.start else None
    except ValueError as e:
        print(f"error: --start: {e}", file=sys.stderr)
        return 2
    r, url, keys, embedded = open_redis(site)
    from .bus import load_edge_keys
    from .credentials import default_keys_file

    # Where control checks edge keys (`crowdflow edge-users`), the twin signs as each camera's edge.
    keys_file = os.environ.get("CROWDFLOW_EDGE_KEYS_FILE") or (
        str(default_keys_file(data_dir())) if default_keys_file(data_dir()).exists() else None)
    signing = load_edge_keys({"CROWDFLOW_EDGE_KEYS": os.environ.get("CROWDFLOW_EDGE_KEYS", ""),
                              "CROWDFLOW_EDGE_KEYS_FILE": keys_file or ""})
    runner = SimRunner(site, sc, r, keys, cams, speed=args.speed, seed=args.seed, start_tod=start,
                       signing_keys=signing)
    try:
        runner.run(_stop_event(), duration_s=args.duration)
    finally:
        if embedded:
            embedded.close()
    log.info("sim done: %d observations", runner.published)
    return 0


def _jsonl_writer(path):
    """Each finished evening's metrics as one JSON line, as it finishes (a long run stopped
    early keeps what it measured)."""
    if not path:
        return None
    import dataclasses
    import json

    def write(m) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(m), default=float) + "\n")

    return write


def cmd_evaluate(args) -> int:
    import json
    import os
    import time

    from sim.evaluate import SWEEP, BaselineParams, as_dicts, evaluate, safe_table, table

    _load_scenario(args)  # a broken file fails here, with its paths
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("none", "baseline", "plans", "mpc")]
    if unknown or not names:
        print(f"error: --policies: unknown {unknown or names} (choose from none, baseline, plans, mpc)", file=sys.stderr)
        return 2
    try:
        sweep = tuple(sorted({float(x) for x in args.sweep.split(",")})) if args.sweep else SWEEP
    except ValueError:
        print(f"error: --sweep: {args.sweep!r} is not a comma-separated list of multipliers", file=sys.stderr)
        return 2
    if not all(0 < d <= 10 for d in sweep):
        print("error: --sweep: multipliers must be within (0, 10]", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    params = BaselineParams(report_delay_s=args.baseline_report_delay_s, decide_delay_s=args.baseline_decide_delay_s)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    t0 = time.monotonic()
    results, safe, series = evaluate(args.scenario, names, seeds, sweep=sweep, jobs=args.jobs,
                                     confirm_delay_s=args.confirm_delay_s, baseline=params, config=args.config,
                                     on_result=_jsonl_writer(args.jsonl),
                                     progress=lambda line: print(f"  {line}  ({time.monotonic() - t0:.0f} s)",
                                                                 file=sys.stderr, flush=True))
    took = time.monotonic() - t0
    cpu = sum(m.cpu_s for by in results.values() for runs in by.values() for m in runs)
    n_ev = sum(len(runs) for by in results.values() for runs in by.values())
    out = [f"scenario {args.scenario}, {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), policies {', '.join(names)}, "
           f"demand sweep {', '.join(f'×{d:g}' for d in sweep)}; {took:.0f} s with {args.jobs} worker(s) "
           f"on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); {n_ev} evenings, {cpu:.0f} CPU-s "
           f"(≈{cpu / max(args.jobs, 1):.0f} s on {args.jobs} idle cores)", ""]
    for d in sorted(results):
        if d in (1.0, 1.3) or len(results[d]) == len(names):
            out += [table(results[d], title=f"demand ×{d:g}"), ""]
    out += ["**safe throughput** (0 zone-minutes > 4 p/m² local, p95 wait ≤ 15 min)", "", safe_table(safe)]
    text = "\n".join(out)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    if args.plots:
        from sim.plots import evening_plots

        for path in evening_plots(series, Path(args.plots)):
            print(f"plot: {path}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"safe": safe, **{f"x{d:g}": as_dicts(r) for d, r in results.items()}},
                                              indent=1, default=float))
    return 0


def cmd_whatif(args) -> int:
    import datetime as dt
    import json
    import time
    from zoneinfo import ZoneInfo

    from sim.model import Model
    from sim.scenario import hhmm_to_s, s_to_hhmm
    from sim.whatif import parse_action, whatif

    sc, site = _load_scenario(args)
    try:
        proposed = [parse_action(a, site) for a in args.action]
    except ValueError as e:
        print(f"error: --action {e}", file=sys.stderr)
        return 2
    unknown: list[str] = []
    if args.live:
        from crowdflow.records import RecordError, ZoneState, decode
        from sim.runner import active_actions

        from .site.partitions import partition_keys

        r, url, keys, embedded = open_redis(site)
        counts = {}
        parts = list(partition_keys(site, keys).values())
        for key, zid, raw in [(k.zone_state, z, v) for k in parts for z, v in r.hgetall(k.zone_state).items()]:
            try:
                st = decode(ZoneState, raw)
            except RecordError as e:
                print(f"warning: {key}[{zid}]: {e}", file=sys.stderr)
                continue
            if st.status == "ok" and st.count is not None and zid in site.zone_by_id:
                counts[zid] = st.count
        unknown = sorted(set(site.zone_by_id) - set(counts))
        active = active_actions(r, parts)
        now = dt.datetime.now(ZoneInfo(site.site.timezone))
        tod = now.hour * 3600 + now.minute * 60 + now.second
        if embedded:
            embedded.close()
        origin = "live zone states"
    else:
        try:
            tod = hhmm_to_s(args.at)
        except ValueError as e:
            print(f"error: --at: {e}", file=sys.stderr)
            return 2
        m = Model(site, sc, seed=args.seed)
        m.run_until(tod)
        counts, active = m.zone_counts(), []
        origin = f"simulated {args.scenario} at {args.at} (seed {args.seed})"
    t0 = time.monotonic()
    w = whatif(site, sc, counts, tod, active, proposed, horizon_min=args.horizon)
    took = time.monotonic() - t0
    if args.json:
        out = {"at": s_to_hhmm(tod), "horizon_min": w.horizon_min, "actions": [a.model_dump() for a in proposed],
               "unknown_zones": unknown,
               "curves": [{"zone_id": c.zone_id, "capacity": c.capacity, "minutes": c.minutes,
                           "without": c.without, "with": c.with_action} for c in w.curves],
               "all_zones": {c.zone_id: {"without": c.without, "with": c.with_action} for c in w.all_curves}}
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(f"what if {', '.join(args.action)} — from {origin}, next {args.horizon:g} min ({took:.1f} s)")
    if unknown:
        print(f"  no live data (started at the worst plausible load): {', '.join(unknown)}")
    if not w.curves:
        print("  no zone changes noticeably")
    step = max(1, len(w.curves[0].minutes) // 6) if w.curves else 1
    for c in w.curves:
        pick = list(range(0, len(c.minutes), step))
        print(f"  {c.zone_id:16s} capacity {c.capacity:5d}   minutes " + " ".join(f"{c.minutes[i]:5.0f}" for i in pick))
        print(f"  {'':16s} {'':14s}   without " + " ".join(f"{c.without[i] / c.capacity:5.0%}" for i in pick))
        print(f"  {'':16s} {'':14s}   with    " + " ".join(f"{c.with_action[i] / c.capacity:5.0%}" for i in pick))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.config, port=args.port)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crowdflow", description="Hongyadong crowd-flow control system")
    p.add_argument("--log-level", default=os.environ.get("CROWDFLOW_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="cmd", required=True)
    cfg = os.environ.get("CROWDFLOW_CONFIG", DEFAULT_CONFIG)

    s = sub.add_parser("check-config", help="validate a site file and print a summary")
    s.add_argument("file", nargs="?", default=cfg)
    s.add_argument("--osm", help="OpenStreetMap extract (GeoJSON with @id) to check the zones against "
                                 "(default: site.osm.file, $CROWDFLOW_OSM)")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("control", help="run the control service")
    s.add_argument("--config", default=cfg)
    s.add_argument("--consumer", help="consumer name in the 'control' group (default control-<host>)")
    s.add_argument("--stale-after", type=float, help="seconds without data before a zone is unknown")
    s.add_argument("--audit-dir", help="archive the audit trail to rotated JSON-lines files here "
                                       "(default $CROWDFLOW_AUDIT_DIR or <data dir>/audit; 'none': keep it in Redis only)")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port "
                                                    "(default $CROWDFLOW_CONTROL_METRICS_PORT; off)")
    s.add_argument("--twin", help="scenario whose simulator is the measures engine's twin (e.g. mayday-evening; "
                                  "env CROWDFLOW_TWIN); without it the plans act by level bundles")
    s.set_defaults(func=cmd_control)

    s = sub.add_parser("dashboard", help="serve the live map")
    s.add_argument("--config", default=cfg)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_dashboard)

    s = sub.add_parser("edge-users", help="create/update a Redis ACL user and signing key per camera's edge agent")
    s.add_argument("--config", default=cfg)
    s.add_argument("--camera", action="append", help="only this camera (repeatable; default: every camera)")
    s.add_argument("--out", help="where the credentials go (default <data dir>/edge-credentials)")
    s.add_argument("--edge-url", help="the Redis URL as the gateways reach it (default REDIS_URL), without user")
    s.add_argument("--rotate", action="store_true", help="new passwords (and keys) for the users made")
    s.set_defaults(func=cmd_edge_users)

    s = sub.add_parser("hash-password", help="read a password (prompt or stdin), print its salted hash")
    s.set_defaults(func=cmd_hash_password)

    s = sub.add_parser("edge", help="run an edge agent for one camera")
    s.add_argument("--config", default=cfg)
    s.add_argument("--camera", required=True, help="camera id from the site file")
    s.add_argument("--source", help="video file, rtsp:// or http:// URL, or device index")
    s.add_argument("--preset", help="calibrated preset id (default: the camera's first)")
    s.add_argument("--model", help="detector weights (default: $CROWDFLOW_MODEL, edge.model, yolo11n.pt)")
    s.add_argument("--loop", action="store_true", help="restart a video file at its end")
    s.add_argument("--fast", action="store_true", help="read a file as fast as possible, not at its frame rate")
    s.add_argument("--max-frames", type=int, help="stop after processing this many frames")
    s.add_argument("--density-model", help="density weights: a head for the detector (.pt) or an MCNN-style net (.h5/.pt); 'none' for off "
                   "(default: $CROWDFLOW_DENSITY_MODEL, edge.density_model, models/yolo11n-density-head.pt)")
    s.add_argument("--spool", help="spool file (default: edge.spool_path)")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    s.add_argument("--log-json", action="store_true", help="structured JSON log lines")
    s.set_defaults(func=cmd_edge)

    s = sub.add_parser("count", help="count people in an image, a folder of images or a video")
    s.add_argument("input")
    s.add_argument("--model", help="detector weights (default: $CROWDFLOW_MODEL or yolo11n.pt)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--limit", type=int, help="stop after this many images/frames")
    s.add_argument("--imgsz", type=int, default=448)
    s.add_argument("--conf", type=float, default=0.25)
    s.add_argument("--density-model", help="density weights: a head for the detector (.pt) or an MCNN-style net "
                   "(.h5/.pt); 'none' for off (default: $CROWDFLOW_DENSITY_MODEL, models/yolo11n-density-head.pt)")
    s.add_argument("--mode", choices=["auto", "detect", "tiled", "density"], default="auto",
                   help="auto: density map for crowds, tiled detection otherwise (default)")
    s.add_argument("--csv", help="also write the records to this CSV file")
    s.add_argument("--json-out", help="also write the records to this JSON file")
    s.add_argument("--annotate", help="write annotated output: a video file (video input), an image file or a folder")
    s.add_argument("--config", default=cfg)
    s.add_argument("--camera", help="use this camera's calibration (person size per row) and draw its zones")
    s.add_argument("--preset", help="the camera's preset (default: its first)")
    s.add_argument("--threads", type=int, default=2)
    s.set_defaults(func=cmd_count)

    s = sub.add_parser("calibrate", help="check pixel↔WGS84 points of a camera preset and write them to the config")
    s.add_argument("--config", default=cfg)
    s.add_argument("--camera", required=True)
    s.add_argument("--preset", default="home")
    s.add_argument("--frame", help="an image or video of the view (gives the image size, and the --grid picture)")
    s.add_argument("--points", help="CSV of u,v,lon,lat (a header line is allowed)")
    s.add_argument("--point", action="append", help="u,v,lon,lat (repeat)")
    s.add_argument("--grid", help="write the frame with a pixel grid, the points and the zones to this image")
    s.add_argument("--max-rms", type=float, default=1.0, help="largest accepted RMS reprojection error (m)")
    s.add_argument("--max-point-error", type=float, default=2.5, help="largest accepted error of one point (m)")
    s.add_argument("--write", action="store_true", help="write the points into --config (comments are kept)")
    s.add_argument("--out", help="write the edited config here instead of over --config")
    s.add_argument("--save-reference", action="store_true",
                   help="store --frame as a reference view of the preset (references/<camera>/ beside the config; "
                        "repeat for night/day) and, with --write, list it in presets[].reference_image")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("adapt", help="fit the density head to one camera view (once per preset, ≤ 10 min on a CPU)")
    s.add_argument("--config", default=cfg)
    s.add_argument("--camera", required=True)
    s.add_argument("--preset", help="the camera's preset (default: its first)")
    s.add_argument("--source", help="footage of the view: video file, folder of frames or stream (default: the camera's source)")
    s.add_argument("--hand-counts", help="CSV frame,count of hand-counted frames of --source")
    s.add_argument("--frames", type=int, default=120, help="frames sampled over the source")
    s.add_argument("--epochs", type=int, default=40)
    s.add_argument("--max-minutes", type=float, default=10.0)
    s.add_argument("--model", help="detector weights (default: $CROWDFLOW_MODEL, edge.model, yolo11n.pt)")
    s.add_argument("--density-model", help="the head to start from (default: as the agent resolves it)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_adapt)

    s = sub.add_parser("sim", help="simulate the site and publish virtual cameras' observations")
    s.add_argument("--scenario", default="mayday-evening", help="scenario name in configs/scenarios/ or a file")
    s.add_argument("--config", help="site file (default: the one the scenario names)")
    s.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second (1 = real time)")
    s.add_argument("--start", help="simulated time of day to start at, HH:MM (default: the scenario's start)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--camera", action="append", help="simulate only this camera (repeatable; default: all)")
    s.add_argument("--exclude", action="append", help="do not simulate this camera (e.g. one with real video)")
    s.add_argument("--duration", type=float, help="stop after this many wall seconds")
    s.set_defaults(func=cmd_sim)

    s = sub.add_parser("evaluate", help="run a simulated evening under each policy and compare them")
    s.add_argument("--scenario", default="mayday-evening")
    s.add_argument("--config", help="site file (default: the one the scenario names)")
    s.add_argument("--seeds", type=int, default=10, help="evenings per policy")
    s.add_argument("--seed0", type=int, default=0, help="first seed")
    s.add_argument("--policies", default="baseline,plans", help="comma-separated: none, baseline, plans, mpc")
    s.add_argument("--sweep", help="demand multipliers for the safe-throughput sweep (default 1.0,1.1,…,1.6)")
    s.add_argument("--jobs", type=int, default=2, help="worker processes")
    s.add_argument("--baseline-report-delay-s", type=float, default=180.0,
                   help="how old the state the baseline's command post acts on is")
    s.add_argument("--baseline-decide-delay-s", type=float, default=120.0, help="the baseline's time to decide")
    s.add_argument("--confirm-delay-s", type=float, default=60.0, help="commander's time to confirm a recommendation")
    s.add_argument("--json", help="also write every run's metrics to this file")
    s.add_argument("--jsonl", help="append each evening's metrics to this file as it finishes")
    s.add_argument("--markdown", help="also write the tables to this file")
    s.add_argument("--plots", help="write the evening plots (PNG) into this folder")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("whatif", help="forecast the next minutes with and without an action")
    s.add_argument("--action", action="append", required=True,
                   help="e.g. one_way:bridge-e-mid:bridge-n-head, traffic_cutoff:road-jiabin, exit_only:gate-11f, "
                        "metro_limit:gate-xsz-9:40, staffing:post-11f:12 (repeatable)")
    s.add_argument("--scenario", default="mayday-evening")
    s.add_argument("--config", help="site file (default: the one the scenario names)")
    s.add_argument("--at", default="20:00", help="start from the simulated evening at this time (HH:MM)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--live", action="store_true", help="start from the live zone states and actions in Redis")
    s.add_argument("--horizon", type=float, default=30, help="minutes ahead")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_whatif)

    s = sub.add_parser("demo", help="embedded redis + control + dashboard + an edge agent on a sample video")
    s.add_argument("--config", default=cfg)
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
