"""The visual plan report: `gpumix report PLAN -o report.html [--png DIR]` and `gpumix plan FILE --html`.

build.py gathers the data (plan, split curves, compare), html.py and svg.py draw one self-contained HTML file
(`html.write_report`), png.py draws PNGs; plan_fields.py is the only module that knows the Plan JSON's field names.
"""
