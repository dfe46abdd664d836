"""What the analysis tools measure, as data: where a prompted ViT's attention goes
(:mod:`.attention`), what each method costs to train and to serve (:mod:`.benchmark`), and
the papers' result tables from the protocol's summaries (:mod:`.report`).

The submodules are imported on use (``from mmvpt.analysis import attention``): importing
mmvpt does not import them.
"""
