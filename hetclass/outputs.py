"""RELION Class3D-style outputs of one classification (file names in one place).

``run_data.star``     input tables + rlnClassNumber (1-based), rlnMaxValueProbDistribution,
                      rlnLogLikeliContribution, rlnNrOfSignificantSamples
``run_model.star``    data_model_general, data_model_classes, data_model_class_N, noise spectra
``run_classNNN.mrc``  class maps at the original box and pixel size (+ ``run_half{1,2}_classNNN_unfil.mrc``)
``run_posteriors.npy`` (n, K) float32 posterior matrix, rows in input order
``run.json``          parameters, seed, versions, per-iteration statistics, timings
``report.html``       the figures and tables of the run (:mod:`hetclass.reports.classify`)
``run_particles.cs``  (CryoSPARC input only) original fields + alignments3D/class(_posterior)
"""

from __future__ import annotations

import os
import platform
from typing import Dict

import numpy as np
import pandas as pd

from . import __version__
from .fourier import resize_volume
from .io.atomic import atomic_save_npy, atomic_write_json, staged_directory
from .io.mrc import write_map
from .io.star import check_writable, particles_to_tables, write_particles_star, write_star_blocks
from .io.star_text import format_star
from .options import options_record

DATA_STAR = "run_data.star"
MODEL_STAR = "run_model.star"
POSTERIORS = "run_posteriors.npy"
RUN_JSON = "run.json"


def class_map_name(k: int) -> str:
    return f"run_class{k + 1:03d}.mrc"


def half_map_name(half: int, k: int) -> str:
    return f"run_half{half + 1}_class{k + 1:03d}_unfil.mrc"


def _spectral_table(values: Dict[str, np.ndarray], box_px: int, pixel_size_A: float) -> pd.DataFrame:
    n = box_px // 2 + 1
    idx = np.arange(n)
    res = idx / (box_px * pixel_size_A)
    table = {"rlnSpectralIndex": idx, "rlnResolution": res,
             "rlnAngstromResolution": np.where(idx > 0, 1.0 / np.maximum(res, 1e-12), 999.0)}
    for name, v in values.items():
        full = np.zeros(n)
        v = np.asarray(v, dtype=np.float64)
        full[:min(n, v.size)] = v[:n]
        table[name] = full
    return pd.DataFrame(table)


def _star_resolution(resolution_A) -> np.ndarray:
    """Class resolutions for STAR files: 999 (RELION's "not determined") where none was."""
    res = np.asarray(resolution_A, dtype=np.float64)
    return np.where(np.isfinite(res), res, 999.0)


def model_blocks(result, particles, options, files: Dict[str, str], out_dir: str) -> dict:
    """The blocks of run_model.star (RELION 3.1 names)."""
    k = result.maps.shape[0]
    state = result.state
    big = int(particles.box_px[0])
    psize = float(particles.pixel_size_A[0])
    post = result.posteriors
    general = {
        "rlnReferenceDimensionality": 3, "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": big, "rlnCurrentResolution": _star_resolution(result.resolution_A).min(),
        "rlnCurrentImageSize": int(result.maps.shape[-1]), "rlnPaddingFactor": 2.0,
        "rlnIsHelix": 0, "rlnFourierSpaceInterpolator": 1, "rlnMinRadiusNnInterpolation": 10,
        "rlnPixelSize": psize, "rlnNrClasses": k, "rlnNrBodies": 1,
        "rlnNrGroups": int(state.sigma2.shape[0]), "rlnTau2FudgeFactor": float(options.tau2_fudge),
        "rlnNormCorrectionAverage": 1.0, "rlnSigmaOffsetsAngst": 0.0,
        "rlnOrientationalPriorMode": 0, "rlnSigmaPriorRotAngle": 0.0,
        "rlnSigmaPriorTiltAngle": 0.0, "rlnSigmaPriorPsiAngle": 0.0,
        "rlnLogLikelihood": float(np.sum(result.log_likelihood)),
        "rlnAveragePmax": float(post.max(1).mean()) if post.size else 0.0,
    }
    classes = pd.DataFrame({
        "rlnReferenceImage": [files[class_map_name(j)] for j in range(k)],
        "rlnClassDistribution": np.asarray(result.class_fractions, dtype=np.float64),
        "rlnAccuracyRotations": np.full(k, 999.0),
        "rlnAccuracyTranslationsAngst": np.full(k, 999.0),
        "rlnEstimatedResolution": _star_resolution(result.resolution_A),
        "rlnOverallFourierCompleteness": np.ones(k),
    })
    blocks = {"model_general": general, "model_classes": classes}
    for j in range(k):
        f = np.clip(result.fsc[j], -1, 0.999999)
        ssnr = np.maximum(2 * f / (1 - f), 0.0)  # SSNR of the full map from the half-map FSC
        blocks[f"model_class_{j + 1}"] = _spectral_table({
            "rlnSsnrMap": ssnr, "rlnGoldStandardFsc": result.fsc[j],
            "rlnFourierCompleteness": np.ones(result.fsc.shape[1]),
            "rlnReferenceSigma2": np.zeros(result.fsc.shape[1]),
            "rlnReferenceTau2": state.tau2[0] + state.tau2[1]}, big, psize)
    groups = particles.optics
    counts = np.bincount(particles.optics_group, minlength=len(groups))
    blocks["model_groups"] = pd.DataFrame({
        "rlnGroupNumber": np.arange(1, len(groups) + 1), "rlnGroupName": list(groups.names),
        "rlnGroupNrParticles": counts, "rlnGroupScaleCorrection": np.ones(len(groups))})
    for g in range(len(groups)):
        blocks[f"model_group_{g + 1}"] = _spectral_table(
            {"rlnSigma2Noise": state.sigma2[g]}, big, psize)
    return blocks


def to_original_box(volume: np.ndarray, box_px: int) -> np.ndarray:
    """A map at the cropped box -> the original box, on RELION's intensity scale.

    Cropping keeps pixel values, so a map at box b projects b voxels where the data's box B
    projects B: voxel values are scaled by b / B (then the Fourier padding keeps them).
    """
    return resize_volume(volume, box_px) * (volume.shape[-1] / box_px)


def _result_columns(particles, labels: np.ndarray, post: np.ndarray,
                    log_likelihood: np.ndarray) -> Dict[str, np.ndarray]:
    extra = {}
    if particles.source.get("format") == "cs":  # keep uids so results can go back to .cs
        from .io.cryosparc import star_columns
        extra.update(star_columns(particles))
    extra.update({
        "rlnClassNumber": labels.astype(np.int64) + 1,
        "rlnMaxValueProbDistribution": post.max(1).astype(np.float64),
        "rlnLogLikeliContribution": np.asarray(log_likelihood, dtype=np.float64),
        "rlnNrOfSignificantSamples": (post >= 0.01).sum(1).astype(np.int64),
    })
    return extra


def preflight_outputs(particles, options, sample: int = 16) -> None:
    """Check, before any work, that the outputs of a classification can be written.

    Every text value the STAR outputs will carry is checked (InputError naming the file,
    column and value otherwise), and ``run_data.star`` (and, for ``.cs`` input, the ``.cs``
    tables) are built in memory for the first ``sample`` particles with placeholder results,
    so a table that cannot be written fails now rather than after the EM.
    """
    check_writable(particles)
    rows = np.arange(min(len(particles), sample))
    sub = particles.take(rows)
    k = max(int(options.classes), 1)
    post = np.full((rows.size, k), 1.0 / k)
    labels = np.zeros(rows.size, dtype=np.int64)
    optics_df, df = particles_to_tables(sub, _result_columns(sub, labels, post,
                                                             np.zeros(rows.size)))
    format_star({"optics": optics_df, "particles": df})
    if particles.source.get("format") == "cs":
        from .io.cryosparc_write import cs_table, csg_text
        csg_text("run_particles.cs", cs_table(sub, labels, post), "check")


def write_classify_outputs(out_dir: str, particles, result, options, run_info: dict) -> Dict[str, str]:
    """Write every output file; returns {name: path as referenced in STAR files}.

    The files are written into a hidden staging folder and renamed into ``out_dir`` only when
    all of them are complete (:func:`hetclass.io.atomic.staged_directory`, ``run.json``
    last): a full disk or another error leaves ``out_dir`` as it was.
    """
    with staged_directory(out_dir, last=(RUN_JSON,)) as stage:
        return _write_all(stage, out_dir, particles, result, options, run_info)


def _write_all(stage: str, out_dir: str, particles, result, options, run_info: dict):
    """Write the outputs into ``stage``; paths in the returned dict and in the STAR files
    name ``out_dir``, where the files will be."""
    k = result.maps.shape[0]
    big = int(particles.box_px[0])
    psize = float(particles.pixel_size_A[0])
    files = {}
    for j in range(k):
        name = class_map_name(j)
        write_map(os.path.join(stage, name), to_original_box(result.maps[j], big), psize)
        files[name] = os.path.join(out_dir, name)
        for h in range(2):
            hname = half_map_name(h, j)
            write_map(os.path.join(stage, hname), to_original_box(result.half_maps[h, j], big),
                      psize)
            files[hname] = os.path.join(out_dir, hname)
    post = result.posteriors
    labels = result.labels
    extra = _result_columns(particles, labels, post, result.log_likelihood)
    write_particles_star(os.path.join(stage, DATA_STAR), particles, extra)
    files[DATA_STAR] = os.path.join(out_dir, DATA_STAR)
    write_star_blocks(os.path.join(stage, MODEL_STAR),
                      model_blocks(result, particles, options, files, out_dir))
    files[MODEL_STAR] = os.path.join(out_dir, MODEL_STAR)
    atomic_save_npy(os.path.join(stage, POSTERIORS), post.astype(np.float32))
    files[POSTERIORS] = os.path.join(out_dir, POSTERIORS)
    if particles.source.get("format") == "cs":
        from .io.cryosparc_write import write_class_subsets
        written = write_class_subsets(stage, particles, labels, post, prefix="run", n_classes=k)
        for paths in written.values():
            for p in (paths if isinstance(paths, (tuple, list)) else [paths]):
                files[os.path.basename(p)] = os.path.join(out_dir, os.path.basename(p))
    info = dict(run_info)
    info.update({
        "hetclass_version": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "options": options_record(options),
        "n_particles": int(len(particles)), "classes": k,
        "class_fractions": np.asarray(result.class_fractions).tolist(),
        "resolution_A": [None if not np.isfinite(r) else float(r) for r in result.resolution_A],
        # "measured": the FSC crossed 0.143; "crop_limit": it never did, the value is the finest
        # shell used (a bound); "unmeasured": nothing resolved (empty or tiny class)
        "resolution_status": list(result.resolution_status or []),
        "iterations": result.stats, "converged": bool(result.state.converged),
        # exploration starts (hetclass.explore): iterations, held-out score, which was kept
        "starts": list(result.state.starts or []),
        "map_pixel_size_A": psize, "map_box_px": big,
        "files": {name: os.path.basename(p) for name, p in files.items()},
    })
    # report.html (a figure or report failure is one warning line, never a failed run)
    files.update(_write_report(stage, out_dir, result, info))
    atomic_write_json(os.path.join(stage, RUN_JSON), info)
    files[RUN_JSON] = os.path.join(out_dir, RUN_JSON)
    return files


def _write_report(stage: str, out_dir: str, result, info: dict) -> Dict[str, str]:
    """report.html into ``stage``; returns {name: its final path in ``out_dir``}."""
    from .reports.classify import write_report_or_warn
    written = write_report_or_warn(stage, result, info)
    info["files"].update({name: os.path.basename(p) for name, p in written.items()})
    return {name: os.path.join(out_dir, os.path.basename(p)) for name, p in written.items()}
