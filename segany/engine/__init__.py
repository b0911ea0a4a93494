"""The data engine: an annotation web app where the model assists a person, and its store.

- ``store``: the SQLite database of images and accepted objects (``training_records`` opens
  it as a training set);
- ``model``: the model behind the app (embedding cache, prefetch, hot checkpoint reload);
- ``app``: the FastAPI server, behind ``security.FrontDoor`` (host/token/origin/size checks);
- ``prefill``: the semi-automatic stage (confident automatic masks, reviewed by a person);
- ``exchange``: COCO / SA-1B export and import;
- ``web/``: the page (plain HTML, CSS and JavaScript).
"""
