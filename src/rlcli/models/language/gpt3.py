"""GPT-3: "Language Models are Few-Shot Learners" (Brown et al., 2020), the eight sizes of its Table 2.1.

"We use the same model and architecture as GPT-2", with a 2,048-token context: so rl builds them with its GPT-2
(``rlcli.models.language.gpt2``), GPT-2's 50,257-token vocabulary, learned positions and tied embeddings, at the
layers, d_model and heads of Table 2.1, feed-forward 4 x d_model. Built on the meta device, `rl summary gpt3_175b`
takes seconds and no weight memory.

Two departures from the letter of the table, both needed to build its own n_params:

- GPT-3 XL prints 24 heads of d_head 128 (3,072) for d_model 2,048. An attention 3,072 wide would build 1.52 B
  parameters; d_model 2,048 throughout builds the printed 1.3B. rl uses 16 heads of 128.
- GPT-3 13B prints 40 heads of 128 (5,120) for d_model 5,140. d_model 5,140 throughout builds 12.95 B, printed
  13.0B; 5,120 (12.85 B) or a 5,120-wide attention in a 5,140 model (12.94 B) would print 12.9B. 5,140 is no
  multiple of 40: rl uses 20 heads of 257. Parameters and MACs do not depend on how a width is split into heads.

The paper alternates dense and "locally banded sparse" attention (as the Sparse Transformer) without saying the
band or which layers: rl counts dense attention in every layer, an upper bound of the attention's MACs.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rlcli.models.cards import Paper, Published
from rlcli.models.language.gpt2 import GPT2, GPT2Config
from rlcli.models.registry import register_model

CONTEXT = 2048

# Table 2.1: name -> (n_params as printed, n_layers, d_model, n_heads used, heads x d_head as printed)
TABLE_2_1: dict[str, tuple[str, int, int, int, str]] = {
    "gpt3_small": ("125M", 12, 768, 12, "12 x 64"),
    "gpt3_medium": ("350M", 24, 1024, 16, "16 x 64"),
    "gpt3_large": ("760M", 24, 1536, 16, "16 x 96"),
    "gpt3_xl": ("1.3B", 24, 2048, 16, "24 x 128"),
    "gpt3_2_7b": ("2.7B", 32, 2560, 32, "32 x 80"),
    "gpt3_6_7b": ("6.7B", 32, 4096, 32, "32 x 128"),
    "gpt3_13b": ("13.0B", 40, 5140, 20, "40 x 128"),
    "gpt3_175b": ("175.0B", 96, 12288, 96, "96 x 128"),
}

# Where rl's count and the printed n_params differ by more than the printed rounding: facts, found by counting.
NOTES = {
    "gpt3_medium": "Table 2.1's hyperparameters build 355,871,744 parameters in GPT-2's layout (GPT-2 medium's "
    "354.8 M plus 1,024 more positions); the row prints 350M",
    "gpt3_175b": "Table 2.1's hyperparameters build 174,604,259,328 parameters in GPT-2's layout; the row prints "
    "175.0B, the model's name",
    "gpt3_xl": "the row's 24 heads x 128 = 3,072 is not its d_model 2,048; only 2,048 throughout builds the printed "
    "1.3B (3,072-wide attention: 1.52 B), so rl uses 16 heads x 128",
    "gpt3_13b": "the row's 40 heads x 128 = 5,120 is not its d_model 5,140; only 5,140 throughout builds the printed "
    "13.0B (5,120: 12.85 B), so rl uses 20 heads x 257",
}

PAPER = Paper(
    title="Language Models are Few-Shot Learners",
    authors="Tom B. Brown, Benjamin Mann, Nick Ryder, Melanie Subbiah, Jared Kaplan, Prafulla Dhariwal, et al.",
    year=2020,
    url="https://arxiv.org/abs/2005.14165",
    arxiv="2005.14165",
)

CONVENTION = (
    "n_params as Table 2.1 prints them; no MACs are printed. rl counts dense attention in every layer, an upper "
    "bound: the paper alternates dense and locally banded sparse layers without stating the band"
)


def config_of(name: str) -> GPT2Config:
    _, layers, width, heads, _ = TABLE_2_1[name]
    return GPT2Config(n_positions=CONTEXT, n_embd=width, n_layer=layers, n_head=heads)


def _register(name: str) -> None:
    config = config_of(name)

    def build(input_size: tuple[int, ...], **kwargs: Any) -> GPT2:
        return GPT2(GPT2Config(**{**asdict(config), **kwargs}))

    register_model(
        name,
        family="gpt3",
        task="language-model",
        default_input=(CONTEXT,),
        input_kind="tokens",
        paper=PAPER,
        published=Published(
            input_size=(CONTEXT,),
            source="Table 2.1",
            params=TABLE_2_1[name][0],
            convention=CONVENTION,
            note=NOTES.get(name, ""),
        ),
        arguments=GPT2Config,
    )(build)


for _name in TABLE_2_1:
    _register(_name)
