"""The Celery/Redis wiring shared by the API (``PYTHIA_QUEUE=celery``) and the workers
(``service.worker``): the Celery application, queue names and the Redis keys both sides use.

Message flow of one request::

    API: validate, decode, resize to the model's input (uint8), [OCR]   -> Job.to_message()
         send_task("pythia.<task>", [model, message, deadline], queue="pythia.<task>",
                   task_id=ID, expires=deadline)                       (Redis list per queue)
    worker thread: Job.from_message -> the process's Batcher (batches across threads)
         -> LPUSH pythia:result:ID <json>  (EXPIRE result_ttl)
    API: BLPOP pythia:result:ID until the deadline (redis.asyncio: no thread per request)

Results travel through a list of our own rather than Celery's result backend: the API waits
with one non-blocking BLPOP per request, and nothing is pickled. A client that goes away sets
``pythia:cancel:ID``; a worker that has not started the item drops it.

Celery settings and why (its documentation's known traps):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after its
  task ran, so a worker killed mid-task leaves it to be redelivered (jobs rely on this);
* ``broker_transport_options.visibility_timeout`` (``PYTHIA_VISIBILITY_TIMEOUT_S``, 3600):
  Redis redelivers an unacknowledged message after this long; it must stay above the longest
  task (a job shard), or a running task is delivered twice. Job shards are idempotent anyway.
  Abandoned messages are looked for every min(10 s, timeout / 2) (kombu's default sweep is
  every 100 s whatever the timeout);
* ``worker_prefetch_multiplier`` 1: a worker reserves as many messages as it has threads
  (``--concurrency``, sized to the batch), no more, so another worker can take the rest;
* the ``threads`` pool is the one to use (many task threads feed one batcher and one GPU);
  Celery's time limits do nothing under it, so every message carries its deadline and the
  batcher enforces it. Under ``prefork`` the models load in each child after the fork
  (``worker_process_init``), never in the parent: CUDA cannot survive a fork;
* ``broker_transport`` = ``RedisTransport`` (for ``redis://``): kombu's, with a channel
  close that survives Redis vanishing before an acknowledgement (kombu 5.7 raised
  ``AttributeError`` there and Celery stopped the whole worker). Not for ``rediss://``:
  naming a transport bypasses kombu's scheme-based TLS defaults, so TLS URLs keep kombu's
  own transport (and the bug);
* JSON only (``accept_content``): no pickle crosses the queue; result keys expire
  (``PYTHIA_RESULT_TTL_S``) and so does Celery's own result metadata (``result_expires``).
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu import Queue
from kombu.transport import redis as kombu_redis

from service.settings import Settings

__all__ = ["JOB_QUEUE", "TASK_QUEUES", "RedisTransport", "cancel_key", "make_celery", "result_key"]

log = logging.getLogger("pythia.queue")

#: One queue per task kind: a slow kind (captions with beams) never blocks the others, and
#: workers can be dedicated to kinds (``celery ... worker -Q pythia.vqa``).
TASK_QUEUES = {"vqa": "pythia.vqa", "textvqa": "pythia.textvqa", "caption": "pythia.caption",
               "dialog": "pythia.dialog"}
JOB_QUEUE = "pythia.jobs"


def result_key(task_id: str) -> str:
    return f"pythia:result:{task_id}"


def cancel_key(task_id: str) -> str:
    return f"pythia:cancel:{task_id}"


class _QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        """Requeue this channel's unacknowledged messages, unless the channel has lost its
        broker: kombu (5.7) then raises ``AttributeError`` from inside ``Channel.close``
        (the transport's ``client`` is already ``None``), which Celery's consumer takes for
        an "Unrecoverable error" and the whole worker exits instead of reconnecting. It
        happens whenever Redis goes away between a task's end and its acknowledgement
        (``task_acks_late``). Those messages are still in Redis's unacked index (written on
        delivery), so the visibility sweep requeues them after the visibility timeout, as
        for a killed worker; nothing is lost that Redis itself kept."""
        transport = getattr(self.channel, "connection", None)
        if client is None and getattr(transport, "client", None) is None:
            if self._delivered:
                log.warning("broker connection gone: %d unacknowledged message(s) left to "
                            "the visibility sweep", len(self._delivered))
            self._delivered.clear()
            return
        super().restore_unacked(client)


class _Channel(kombu_redis.Channel):
    QoS = _QoS


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with a channel whose close survives a lost broker (see
    ``_QoS.restore_unacked``); selected by ``make_celery`` for ``redis://`` URLs
    (``broker_transport``)."""

    Channel = _Channel


def make_celery(settings: Settings | None = None) -> Celery:
    s = settings or Settings()
    app = Celery("pythia", broker=s.redis_url, backend=s.redis_url)
    timeout = float(os.environ.get("PYTHIA_VISIBILITY_TIMEOUT_S", "3600"))
    conf: dict[str, Any] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": TASK_QUEUES["vqa"],
        # a worker consumes every queue unless -Q names some
        "task_queues": [Queue(q, routing_key=q) for q in [*TASK_QUEUES.values(), JOB_QUEUE]],
        "task_routes": {**{f"pythia.{t}": {"queue": q} for t, q in TASK_QUEUES.items()},
                        "pythia.job_shard": {"queue": JOB_QUEUE}},
        # kombu sweeps for abandoned (unacknowledged, past the visibility timeout) messages
        # every interval x throttle seconds: 100 s by default, whatever the timeout. Sweep
        # every min(10 s, timeout / 2) instead, so a killed worker's tasks come back soon.
        "broker_transport_options": {"visibility_timeout": timeout,
                                     "unacked_restore_interval": max(1, min(10,
                                                                            int(timeout / 2))),
                                     "unacked_restore_throttle": 1,
                                     "socket_timeout": 5, "socket_connect_timeout": 2},
        "broker_connection_retry_on_startup": True,
        # a channel that survives Redis going away before an acknowledgement (RedisTransport)
        **({"broker_transport": f"{__name__}:RedisTransport"}
           if urlsplit(s.redis_url).scheme == "redis" else {}),
        "task_publish_retry": False,  # a Redis outage must answer 503 now, not hang
        "result_expires": int(float(os.environ.get("PYTHIA_RESULT_TTL_S", "3600"))),
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_ignore_result": True,  # results travel through result_key lists
    }
    app.conf.update(conf)
    return app
