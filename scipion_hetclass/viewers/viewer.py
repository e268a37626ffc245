"""``HetClassViewer``: the report and the key plots of a hetclass protocol."""

from __future__ import annotations

import os

import pyworkflow.viewer as pwviewer

from ..protocols import HetClassProtClassify3D, HetClassProtStability
from ..protocols.protocol_classify3d import CLASSIFY_DIR
from .plots import save_summary

SUMMARY_PNG = "hetclass_summary.png"


class FileView(pwviewer.View):
    """Opens a file (PNG, PDF, HTML) with the desktop's default application."""

    def __init__(self, path: str, tkParent=None):
        pwviewer.View.__init__(self)
        self.path = path
        self._tkParent = tkParent

    def show(self):
        from pyworkflow.gui.text import _open_cmd
        _open_cmd(self.path, self._tkParent)


class HetClassViewer(pwviewer.Viewer):
    """Class sizes, resolution, stability and the splitting tree, plus the run's report."""

    _label = "hetclass results"
    _environments = [pwviewer.DESKTOP_TKINTER]
    _targets = [HetClassProtClassify3D, HetClassProtStability]

    def _visualize(self, obj, **kwargs):
        prot = obj
        views = []
        if not hasattr(prot, "outputClasses"):
            return [self.infoMessage("The protocol has no output classes yet.",
                                     "hetclass results")]
        png = save_summary(prot, prot._getExtraPath(SUMMARY_PNG))
        views.append(FileView(png, self.getTkRoot()))
        report = prot.reportPath() if hasattr(prot, "reportPath") else None
        if not report:      # classify: the run's report.html (hetclass.reports.classify)
            report = prot._getExtraPath(CLASSIFY_DIR, "report.html")
        if report and os.path.exists(report):
            if report.endswith((".txt", ".log", ".md", ".json")):
                views.append(self.textView([report], "hetclass report"))
            else:
                views.append(FileView(report, self.getTkRoot()))
        return views
