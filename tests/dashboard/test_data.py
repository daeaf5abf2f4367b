"""/dashboard/data and /dashboard against running systems: live workers, GPU configuration, queues
with their oldest waiting age, and recent tasks."""

from __future__ import annotations

import httpx

from tests.system import STAGE_SERVICES, System, wait_terminal


async def test_data_shows_workers_gpus_queues_and_a_finished_task(system: System, task_body: dict) -> None:
    pids = {system.processes[s].pid for s in STAGE_SERVICES}
    await system.wait_heartbeats(pids, timeout_s=30)
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
        accepted = await api.post("/api/v1/tasks", json=task_body)
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]
        assert (await wait_terminal(system.nats_url, [task_id], timeout_s=90))[task_id]["state"] == "SUCCESS"
        response = await api.get("/dashboard/data")
        page = (await api.get("/dashboard")).text
    assert response.status_code == 200
    data = response.json()

    workers = {w["pid"]: w for w in data["workers"]}
    assert pids <= workers.keys()
    for pid in pids:
        worker = workers[pid]
        assert worker["host"] and worker["version"] and worker["worker_id"]
        assert worker["uptime_s"] >= 0 and 0 <= worker["heartbeat_age_s"] < 30
        assert isinstance(worker["in_flight"], list)
    assert {w["service"] for w in data["workers"]} >= {*STAGE_SERVICES, "api"}
    [gpu] = [g for g in data["gpus"] if g["worker_id"] == workers[system.processes["upscaler"].pid]["worker_id"]]
    assert gpu["precision"] in ("fp32", "fp16") and gpu["device"] and "models_loaded" in gpu

    queues = data["queues"]
    assert len(queues["streams"]) == 11 and len(queues["consumers"]) == 44 and len(queues["stages"]) == 4
    [task] = [t for t in data["tasks"] if t["task_id"] == task_id]
    assert task["state"] == "SUCCESS" and task["progress"] == 1.0 and task["duration_s"] > 0
    assert task["stage"] is None and task["error"] is None
    assert data["summary"]["workers"] >= 4
    assert "/dashboard/data" in {e["path"] for e in data["endpoints"]}

    assert task_id in page and "Recent tasks" in page and 'id="dashboard-spec"' in page
    assert '"url": "/dashboard/data"' in page
    assert 'http-equiv="refresh"' not in page  # it refreshes itself in place, not by reloading


async def test_a_waiting_task_shows_in_its_queue_with_its_age(api_alone: System) -> None:
    # Nothing takes the task, so it waits in the fetch queue of its priority.
    async with httpx.AsyncClient(base_url=api_alone.api_url, timeout=30) as api:
        body = {"task_name": "image_super_resolution_pipeline", "priority": 3,
                "args": ["https://example.com/in.png", "s3://bucket/out.png"]}  # fmt: skip
        task_id = (await api.post("/api/v1/tasks", json=body)).json()["task_id"]
        deleted = (await api.post("/api/v1/tasks", json=body)).json()["task_id"]
        assert (await api.delete(f"/api/v1/tasks/{deleted}")).status_code == 200
        data = (await api.get("/dashboard/data")).json()
        page = (await api.get("/dashboard")).text
    [fetch] = [c for c in data["queues"]["consumers"] if c["stream"] == "TM_WORK_P3" and c["stage"] == "fetch"]
    assert (fetch["pending"], fetch["ack_pending"]) == (1, 0)
    assert 0 <= fetch["oldest_waiting_s"] < 30
    assert data["summary"]["waiting"] == 1 and data["summary"]["oldest_waiting_s"] is not None
    [task] = data["tasks"]  # the deleted one is left out
    assert (task["task_id"], task["state"], task["stage"], task["priority"]) == (task_id, "PENDING", "fetch", 3)
    assert [w["service"] for w in data["workers"]] == ["api"]  # this API process, no stage running
    assert "Stage consumers with work" in page and "<td>TM_WORK_P3</td>" in page


async def test_history_charts_a_finished_task_and_the_queues(system: System, task_body: dict) -> None:
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as api:
        before = (await api.get("/dashboard/history")).json()
        task_id = (await api.post("/api/v1/tasks", json=task_body)).json()["task_id"]
        assert (await wait_terminal(system.nats_url, [task_id], timeout_s=90))[task_id]["state"] == "SUCCESS"
        history = (await api.get("/dashboard/history")).json()
        charts = (await api.get("/dashboard/charts")).text
    assert history["bin_s"] == 10
    series = {c["id"]: {s["name"]: s["points"] for s in c["series"]} for c in history["charts"]}
    assert set(series["completions"]) == {"SUCCESS", "FAILURE", "TIMEOUT", "REVOKED"}
    earlier = {s["name"]: sum(s["points"]) for s in before["charts"][0]["series"]}
    # this one task, in the bin of its end (the system may have run tasks of other tests before)
    assert round((sum(series["completions"]["SUCCESS"]) - earlier["SUCCESS"]) * 10) == 1
    assert sum(series["completions"]["FAILURE"]) == earlier["FAILURE"]
    assert [p for p in series["latency"]["p99"] if p is not None] != []
    assert set(series["queues"]) == {"fetch", "classify", "upscale", "upload"}
    assert series["queues"]["fetch"][-1] == 0  # sampled as the charts were read: nothing waits now
    assert "data-series='SUCCESS'" in charts and charts.count("<svg") >= 3


async def test_history_shows_the_queue_depth_as_it_is_read(api_alone: System) -> None:
    body = {
        "task_name": "image_super_resolution_pipeline",
        "args": ["https://example.com/in.png", "s3://bucket/out.png"],
    }
    async with httpx.AsyncClient(base_url=api_alone.api_url, timeout=30) as api:
        for _ in range(3):
            assert (await api.post("/api/v1/tasks", json=body)).status_code == 202
        history = (await api.get("/dashboard/history")).json()
    [queues] = [c for c in history["charts"] if c["id"] == "queues"]
    depth = {s["name"]: s["points"][-1] for s in queues["series"]}
    assert depth == {"fetch": 3, "classify": 0, "upscale": 0, "upload": 0}
