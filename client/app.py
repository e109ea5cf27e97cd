"""fedlora ClientApp: turn a Message into a plain task, have it run, turn the reply into a Message.

The run config arrives in every message (as YAML bytes), so the same ClientApp serves the
in-process simulation and ``flwr run`` deployments; per-node facts come from the node config.

With ``worker="<socket path>"`` in the node config the task is forwarded to the node's resident
worker (``python -m fedlora.deploy.worker``), which keeps the base model in memory across rounds;
this module then imports nothing heavier than Flower and numpy, because Flower 1.41 starts a
fresh ClientApp process for every message. Without a worker the task runs here, in process.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlora.deploy.messages import ClientTask, TaskReply
from fedlora.packing import pack, unpack

app = ClientApp()


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def to_task(kind: str, msg: Message, context: Context) -> ClientTask:
    """The message's records and this node's config as plain values and numpy arrays."""
    content = msg.content
    return ClientTask(
        kind=kind,
        configs={name: {k: _plain(v) for k, v in rec.items()}
                 for name, rec in content.config_records.items()},
        arrays={name: unpack({k: a.numpy() for k, a in rec.items()})
                for name, rec in content.array_records.items()},
        node_config=dict(context.node_config),
    )


def to_content(reply: TaskReply) -> RecordDict:
    """A reply's records as Flower records."""
    records: dict[str, Any] = {name: ConfigRecord(values) for name, values in reply.configs.items()}
    records.update({name: MetricRecord(values) for name, values in reply.metrics.items()})
    records.update({name: ArrayRecord(array_dict={k: Array(v) for k, v in pack(arrays).items()})
                    for name, arrays in reply.arrays.items()})
    return RecordDict(records)


def handle(kind: str, msg: Message, context: Context) -> Message:
    """Run one task here or on the node's worker, and answer the message."""
    task = to_task(kind, msg, context)
    worker = str(task.node_config.get("worker", "")).strip()
    if worker:
        from fedlora.deploy.proxy import call_worker

        reply = call_worker(worker, task)
    else:
        from fedlora.deploy.tasks import run_task  # the heavy imports: torch, transformers, peft

        reply = run_task(task)
    return Message(to_content(reply), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return handle("query", msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return handle("evaluate", msg, context)
