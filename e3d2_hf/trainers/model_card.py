"""The one model-card builder: every README.md this project writes (the stages' folders, `e3d2 publish`).

A card is a `huggingface_hub.ModelCard`: YAML front matter from `ModelCardData` (library, tags) and a
body rendered from one Jinja template, so every card has the same sections in the same order:

1. what the model is (title, description, optionally a picture such as the dance GIF),
2. how to use it: `pip install e3d2-hf`, `import e3d2_hf` (which registers our models with the Auto
   classes), `Auto*.from_pretrained`, a few lines of what to do with it,
3. what it reached: the stage's tables (`CardTable`),
4. the recipe values that made it,
5. the citation of E3D2 and Bailando.

A stage supplies only its facts (`build_model_card`'s arguments); `format_value` is the one way a
number becomes a table cell.

    card = build_model_card(
        title="E3D2 reward model",
        description="Learned per-step reward ...",
        auto_class="AutoModel",
        tables=[CardTable("Pair accuracy", columns=["train", "held-out"], rows=[[0.98, 0.91]])],
        recipe=recipe_values(config, CARD_KEYS),
        recipe_section="reward",
    )
    card.save(folder / "README.md")
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

TAGS = ("e3d2", "dance-generation", "music-to-dance")

CITATION = """\
@article{wang2023e3d2,
  author={Wang, Zilin and Zhuang, Haolin and Li, Lu and Zhang, Yinmin and Zhong, Junjie and Chen, Jun and Yang, Yu and Tang, Boshi and Wu, Zhiyong},
  title={Explore 3D Dance Generation via Reward Model from Automatically-Ranked Demonstrations},
  journal={arXiv preprint arXiv:2312.11442},
  year={2023}
}

@inproceedings{siyao2022bailando,
  author={Siyao, Li and Yu, Weijiang and Gu, Tianpei and Lin, Chunze and Wang, Quan and Qian, Chen and Loy, Chen Change and Liu, Ziwei},
  title={Bailando: 3D Dance Generation by Actor-Critic GPT with Choreographic Memory},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2022}
}"""

# `{%-` drops the line break before a tag, so an absent optional part leaves no blank lines behind.
TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

{{ description }}
{%- if media %}

{{ media }}
{%- endif %}

## Use

```bash
pip install e3d2-hf
```

```python
import e3d2_hf  # registers the E3D2 models with the transformers Auto classes
from transformers import {{ auto_class }}
{%- for line in imports %}
{{ line }}
{%- endfor %}

{% if model_id -%}
{{ loaded_as }} = {{ auto_class }}.from_pretrained("{{ model_id }}")
{%- else -%}
{{ loaded_as }} = {{ auto_class }}.from_pretrained(PATH)  # PATH: this folder, or the Hub repository it was uploaded to
{%- endif %}
{%- for line in usage %}
{{ line }}
{%- endfor %}
```
{%- if usage_note %}

{{ usage_note }}
{%- endif %}
{%- for table in tables %}

## {{ table.heading }}
{%- if table.note %}

{{ table.note }}
{%- endif %}

{{ table.markdown() }}
{%- endfor %}
{%- if recipe %}

## Recipe{% if recipe_section %} (section `{{ recipe_section }}`){% endif %}

{{ recipe }}
{%- endif %}

## Citation

```bibtex
{{ citation }}
```

"""  # Jinja drops the last line break; the blank line above leaves the card ending in one


def format_value(value: Any) -> str:
    """A value as a card shows it: `-` when missing, floats to 4 significant digits (whole from 10,000 on),
    enums as a recipe writes them (`constant`, not `SchedulerType.CONSTANT`)."""
    if value is None:
        return "-"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return f"{number:.0f}" if math.isfinite(number) and abs(number) >= 1e4 else f"{number:.4g}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table whose cells are `format_value`'s (text cells pass unchanged)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class CardTable:
    """One section of figures: its heading, a note on what was measured and on what, the table."""

    heading: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""

    def markdown(self) -> str:
        return markdown_table(self.columns, self.rows)


def recipe_values(recipe: Any, keys: Iterable[str]) -> dict[str, Any]:
    """The values of `keys` in a stage's config (attributes) or a saved recipe (a mapping), skipping keys it lacks."""
    if isinstance(recipe, Mapping):
        return {key: recipe[key] for key in keys if key in recipe}
    return {key: getattr(recipe, key) for key in keys if hasattr(recipe, key)}


def build_model_card(
    *,
    title: str,
    description: str,
    auto_class: str,
    tags: Sequence[str] = (),
    media: str = "",
    model_id: str | None = None,
    loaded_as: str = "model",
    imports: Sequence[str] = (),
    usage: Sequence[str] = (),
    usage_note: str = "",
    tables: Sequence[CardTable] = (),
    recipe: Mapping[str, Any] | None = None,
    recipe_section: str | None = None,
) -> ModelCard:
    """The model card of one model (see the module docstring for its sections).

    Args:
        title: the card's heading.
        description: what the model is, how it was trained, on what (Markdown).
        auto_class: the `transformers` Auto class that loads it (`AutoModel`, `AutoModelForCausalLM`).
        tags: Hub tags of this model, added to `TAGS`.
        media: Markdown shown under the description (e.g. the dance GIF and its caption).
        model_id: the Hub repository, when known; otherwise the code loads from `PATH`.
        loaded_as: the variable the loaded model is bound to in the code.
        imports: import lines the usage needs beyond `e3d2_hf` and the Auto class.
        usage: Python lines after loading.
        usage_note: Markdown under the code (e.g. the command line).
        tables: the figures it reached, or what it is made of.
        recipe: recipe key -> value, shown as a table.
        recipe_section: the recipe section those keys come from.
    """
    data = ModelCardData(library_name="transformers", tags=list(dict.fromkeys([*TAGS, *tags])))
    return ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        title=title,
        description=description,
        media=media,
        auto_class=auto_class,
        model_id=model_id,
        loaded_as=loaded_as,
        imports=list(imports),
        usage=list(usage),
        usage_note=usage_note,
        tables=list(tables),
        recipe=markdown_table(("key", "value"), recipe.items()) if recipe else "",
        recipe_section=recipe_section,
        citation=CITATION,
    )


__all__ = ["CITATION", "TAGS", "CardTable", "build_model_card", "format_value", "markdown_table", "recipe_values"]
