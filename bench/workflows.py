"""The seed's benchmark workflow, used by the demo, the end-to-end tests and the benchmarks.

Four LLM steps in three waves: ``extract`` → ``analyze_a`` ‖ ``analyze_b`` →
``summarize``, each prompt built from the previous results (the shape of the Convex
executor-mode benchmark, ``executorResearchWorkflow``).

Against the simulator's default "echo" replies the result is a pure function of
the topic: :func:`expected_summary` computes it, so tests can check every result.
"""

from __future__ import annotations

import asyncio
import os

from conveyor import WorkflowContext, workflow

#: Override with $CONVEYOR_DEMO_MODEL when running against the real API.
MODEL = os.environ.get("CONVEYOR_DEMO_MODEL", "claude-haiku-4-5")
MAX_TOKENS = 64

TOPICS = (
    "tidal energy",
    "urban beekeeping",
    "quantum error correction",
    "soil carbon",
    "desalination",
    "coral reef restoration",
    "solid-state batteries",
    "remote work productivity",
    "microplastics in rivers",
    "vertical farming",
    "asteroid mining",
    "sleep and memory",
    "high-speed rail",
    "lab-grown meat",
    "open-source funding",
    "glacier retreat",
    "ancient DNA",
    "heat pumps",
    "language acquisition",
    "citizen science",
)


def extract_prompt(topic: str) -> str:
    return f"Extract exactly 3 key claims about {topic}, one per line."


def analyze_a_prompt(claims: str) -> str:
    return f"Fact-check each claim: {claims}"


def analyze_b_prompt(claims: str) -> str:
    return f"Assess the logical coherence of: {claims}"


def summarize_prompt(analysis_a: str, analysis_b: str) -> str:
    return f"Write a 2-3 sentence executive summary of: {analysis_a} ||| {analysis_b}"


def _ask(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


@workflow
async def research(ctx: WorkflowContext, topic: str, max_tokens: int = MAX_TOKENS) -> dict[str, object]:
    claims = await ctx.llm(
        model=MODEL, max_tokens=max_tokens, name="extract", messages=_ask(extract_prompt(topic))
    )
    analysis_a, analysis_b = await asyncio.gather(
        ctx.llm(
            model=MODEL, max_tokens=max_tokens, name="analyze_a", messages=_ask(analyze_a_prompt(claims.text))
        ),
        ctx.llm(
            model=MODEL, max_tokens=max_tokens, name="analyze_b", messages=_ask(analyze_b_prompt(claims.text))
        ),
    )
    summary = await ctx.llm(
        model=MODEL,
        max_tokens=max_tokens,
        name="summarize",
        messages=_ask(summarize_prompt(analysis_a.text, analysis_b.text)),
    )
    output_tokens = sum(r.usage.get("output_tokens", 0) for r in (claims, analysis_a, analysis_b, summary))
    return {"topic": topic, "summary": summary.text, "output_tokens": output_tokens}


def expected_summary(topic: str, max_tokens: int = MAX_TOKENS) -> str:
    """The summary :func:`research` returns when every reply echoes its prompt (the simulator's default)."""

    def echo(prompt: str) -> str:
        return prompt[: max_tokens * 4]

    claims = echo(extract_prompt(topic))
    return echo(summarize_prompt(echo(analyze_a_prompt(claims)), echo(analyze_b_prompt(claims))))


#: The fan-out scenario (``python -m bench fanout``): a ``fanout`` root makes one LLM call
#: and, given ``children``, then fans out that many one-step ``fanout_child`` workflows, so a
#: child's step and a newer root's step cost exactly the same. The parent's own call first
#: puts the fan-out behind the newer roots' queued steps.
FANOUT_STEP = "answer"


async def _answer(ctx: WorkflowContext, index: int) -> str:
    reply = await ctx.llm(
        model=MODEL, max_tokens=MAX_TOKENS, name=FANOUT_STEP, messages=_ask(f"Answer question #{index}.")
    )
    return reply.text


@workflow
async def fanout(ctx: WorkflowContext, index: int, children: int = 0) -> int:
    await _answer(ctx, index)
    if children == 0:
        return 1
    handles = [ctx.start_child("fanout_child", {"index": index * 1_000_000 + i}) for i in range(children)]
    return len(await asyncio.gather(*handles))


@workflow
async def fanout_child(ctx: WorkflowContext, index: int) -> str:
    return await _answer(ctx, index)
