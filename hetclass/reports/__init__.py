"""Self-contained HTML reports (``report.html``) of every hetclass run.

``page``     the page builder, tables and the figure-to-PNG embedding shared by every report
``figures``  figures shared by the classify and stability reports (FSC, map views, ...)
``classify`` the report of one classification (``hetclass classify`` / ``demo``)
"""
