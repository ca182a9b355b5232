"""Locust load test for fibd, in the shape the services fibd grew out of used.

    locust -f bench/locustfile.py --host http://127.0.0.1:8080
    bench/locust-smoke              # headless 20 s smoke run, CSV figures

User classes (weights give the mix):
- StepperUser: mixed /current, /next, /previous (reads dominate).
- FibUser: /v1/fib with a realistic n distribution: mostly small and cached,
  a tail of large n that needs the compute worker.
- PrimesUser: submits a primes task, then either polls or waits with ?wait.
- SmartUser: /api/smart with a random timeout between 500 and 1000 ms.

A 429 (rate limited) anywhere, and a 503 from /api/smart (the upstream failed
within the deadline, which fibd reports as designed), count as the service
behaving, as the smart service's own load test counted them.
"""

import random

from locust import HttpUser, between, task

JSON = {"Accept": "application/json"}


def behaving(response, also_ok=()):
    """Marks a response a success if fibd answered as designed."""
    if response.status_code < 400 or response.status_code == 429 or response.status_code in also_ok:
        response.success()
    else:
        response.failure(f"status {response.status_code}: {response.text[:200]}")


class StepperUser(HttpUser):
    weight = 4
    wait_time = between(0.01, 0.1)

    @task(6)
    def current(self):
        with self.client.get("/current", headers=JSON, catch_response=True) as r:
            behaving(r)

    @task(2)
    def next(self):
        with self.client.post("/next", headers=JSON, catch_response=True) as r:
            behaving(r)

    @task(2)
    def previous(self):
        with self.client.post("/previous", headers=JSON, catch_response=True) as r:
            behaving(r)


def realistic_n():
    """Mostly small n (table or cache), some mid-size, a thin tail of large n."""
    roll = random.random()
    if roll < 0.80:
        return random.randint(0, 1000)
    if roll < 0.97:
        return random.randint(1000, 20_000)
    return random.randint(20_000, 200_000)


class FibUser(HttpUser):
    weight = 3
    wait_time = between(0.01, 0.1)

    @task
    def fib(self):
        n = realistic_n()
        with self.client.get(f"/v1/fib?n={n}", name="/v1/fib?n=[n]", catch_response=True) as r:
            behaving(r, also_ok=(503,))  # 503: compute queue full, Retry-After given


class PrimesUser(HttpUser):
    weight = 2
    wait_time = between(0.1, 0.5)

    @task
    def submit_and_collect(self):
        n = random.choice([10, 100, 1000, 10_000, random.randint(1, 100_000)])
        with self.client.post(
            "/v1/primes/tasks", json={"n": n}, name="/v1/primes/tasks", catch_response=True
        ) as r:
            behaving(r, also_ok=(503,))
            if r.status_code != 202:
                return
            task_id = r.json()["request_id"]
        path = f"/v1/primes/tasks/{task_id}"
        if random.random() < 0.5:
            with self.client.get(
                path + "?wait=10", name="/v1/primes/tasks/[id]?wait", catch_response=True
            ) as r:
                behaving(r)
            return
        for _ in range(20):
            with self.client.get(path, name="/v1/primes/tasks/[id]", catch_response=True) as r:
                behaving(r)
                if r.status_code != 200 or r.json().get("status") in ("done", "failed"):
                    return
            self.wait()


class SmartUser(HttpUser):
    weight = 1
    wait_time = between(0.1, 0.5)

    @task
    def smart(self):
        timeout = random.randint(500, 1000)
        with self.client.get(
            f"/api/smart?timeout={timeout}", name="/api/smart", catch_response=True
        ) as r:
            behaving(r, also_ok=(503,))
