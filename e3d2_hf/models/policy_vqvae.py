"""The VQ-VAE that travels with a policy: a policy's actions are pose codes, and only its VQ-VAE turns them into joints.

`E3D2PolicyModel` carries one: `attach_vqvae` (kept outside the module tree, so it is neither in the
policy's weights nor trained with it), `save_pretrained` writes it to `<dir>/<config.vqvae_path>`,
`load_vqvae` loads it back lazily from wherever the policy came from: a local folder or a Hub
repository, with the `subfolder`, `revision`, `cache_dir`, `token` and `local_files_only` that
`from_pretrained` was given (so `AutoModelForCausalLM.from_pretrained("USER/NAME")` then
`load_vqvae()` works from the Hub cache, offline too). transformers' own `from_pretrained` resolves
the VQ-VAE, as `<subfolder>/<vqvae_path>` of the same repository and revision.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e3d2_hf.utils import E3D2Error, atomic_directory

if TYPE_CHECKING:
    from e3d2_hf.models.modeling_vqvae import E3D2VQVAE

# The `from_pretrained` options that say where the policy was found; its VQ-VAE is looked for there too.
SOURCE_OPTIONS = ("subfolder", "revision", "cache_dir", "token", "local_files_only")


class CarriesVQVAE:
    """Mixin for a `PreTrainedModel` whose config has `codebook_size` and `vqvae_path`; it sets `self._vqvae = None` in `__init__`.

    (No class-level annotation of `_vqvae`: transformers resolves the class's type hints at run time.)
    """

    @property
    def vqvae(self) -> E3D2VQVAE | None:
        """The attached VQ-VAE, or None (see `load_vqvae`)."""
        return self._vqvae

    def attach_vqvae(self, vqvae: E3D2VQVAE) -> None:
        """Make `vqvae` travel with the policy (written to `<dir>/<vqvae_path>` by `save_pretrained`).

        Stored outside the module tree so it is neither in the policy's weights nor trained with it.
        """
        if vqvae.config.codebook_size != self.config.codebook_size:
            raise E3D2Error(f"VQ-VAE has {vqvae.config.codebook_size} codes per half, the policy expects {self.config.codebook_size}")
        self.__dict__["_vqvae"] = vqvae

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """transformers' `from_pretrained`, remembering where the policy came from (for `load_vqvae`)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        model.__dict__["_vqvae_source"] = {key: kwargs[key] for key in SOURCE_OPTIONS if kwargs.get(key) not in (None, "")}
        return loaded

    def _vqvae_location(self) -> tuple[str, dict[str, Any]] | None:
        """(repository or folder, `from_pretrained` options) of the VQ-VAE beside the policy, or None if there is none to look for."""
        source = self.config.name_or_path
        if not source or not self.config.vqvae_path:
            return None
        options = dict(self.__dict__.get("_vqvae_source", {}))
        options["subfolder"] = "/".join(part for part in (options.get("subfolder", "").strip("/"), self.config.vqvae_path) if part)
        return str(source), options

    def load_vqvae(self) -> E3D2VQVAE:
        """The attached VQ-VAE, else the one saved next to the policy (loaded once, then attached)."""
        if self._vqvae is not None:
            return self._vqvae
        location = self._vqvae_location()
        if location is None:
            raise E3D2Error("policy has no VQ-VAE: attach one with attach_vqvae() or load the policy from a folder that has one")
        source, options = location
        from e3d2_hf.models.modeling_vqvae import E3D2VQVAE
        from e3d2_hf.models.weights import load_pretrained, short_reason

        local = Path(source) / options["subfolder"]
        if local.is_dir():  # a folder on disk: every check of the one weights loader
            vqvae = load_pretrained(E3D2VQVAE, local)
        else:
            expected = f"{source.rstrip('/')}/{options['subfolder']}" + (f" at revision {options['revision']}" if "revision" in options else "")
            try:
                vqvae = E3D2VQVAE.from_pretrained(source, **options)
            except Exception as exc:  # "does not appear to have a file named config.json", not in the Hub cache, unreadable weights
                raise E3D2Error(f"policy at {source} has no VQ-VAE (expected {expected}): {short_reason(exc)}") from exc
        self.attach_vqvae(vqvae.to(self.device).eval())
        return self._vqvae

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, is_main_process: bool = True, **kwargs: Any) -> None:
        """transformers' save, plus the VQ-VAE into `<save_directory>/<vqvae_path>`.

        The attached VQ-VAE is saved; one that was never loaded is loaded from where the policy came
        from first, so a policy re-saved after fine-tuning (or after a Hub download) still carries it.
        A policy with no VQ-VAE anywhere is saved without one.
        """
        vqvae = self._vqvae
        if vqvae is None and is_main_process and self._vqvae_location() is not None:
            try:
                vqvae = self.load_vqvae()
            except E3D2Error:
                vqvae = None
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process and vqvae is not None and self.config.vqvae_path:
            with atomic_directory(os.path.join(save_directory, self.config.vqvae_path)) as folder:
                vqvae.save_pretrained(folder)


__all__ = ["CarriesVQVAE"]
