"""The package's import graph: no module of ice_tf imports, even inside a function, a
module that imports it back (directly or through others)."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "ice_tf")


def _modules():
    """{dotted module name: path} of every module under ice_tf/."""
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, name), REPO)[:-3]
                dotted = relative.replace(os.sep, ".")
                found[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = (
                    os.path.join(folder, name))
    return found


def import_graph():
    """{module: set of ice_tf modules it imports anywhere in its body}."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        package = module if is_package else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # A module inside a package may reach its siblings through the package.
                if target and target != module and not (target == package and not is_package):
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            if cycle:
                return cycle
    return None


def test_no_import_cycle_among_ice_tf_modules():
    graph = {module: edges for module, edges in import_graph().items() if module != "ice_tf"}
    graph = {module: edges - {"ice_tf"} for module, edges in graph.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "ice_tf.backbones" in graph["ice_tf.models.ood_model"]  # imported inside build_model
    assert "ice_tf.analysis" in graph["ice_tf.experiment.run_folder"]  # inside analysis_path


# The layers, lowest first: a module imports only from its own layer or those below.
# Each is a folder (a package) or a few small modules; __init__.py names the same layers.
LAYERS = (
    ("foundation", ("atomic_io", "json_lines", "ownership", "precision")),
    ("maths", ("layers", "losses", "scores", "metrics", "calibration", "gda", "distribute")),
    ("parts", ("data", "backbones", "detectors", "models", "export")),
    ("analysis", ("analysis",)),
    ("experiment", ("experiment",)),
    ("top", ("figures", "report", "cli", "__main__")),
)
# Earlier module paths: thin aliases of the modules they became (ice_tf/_moved.py).
OLD_PATHS = ("_moved", "callbacks", "checkpoint", "config", "evaluation", "plotting", "run_data",
             "run_folder", "run_lock", "toy")
FOLDERS = ("analysis", "backbones", "cli", "data", "detectors", "experiment", "figures", "models")


def _layer_of(module):
    top = module.split(".")[1] if module.count(".") else None
    for rank, (_, names) in enumerate(LAYERS):
        if top in names:
            return rank
    return None


def test_every_module_belongs_to_one_layer():
    unplaced = [m for m in import_graph() if m != "ice_tf" and _layer_of(m) is None
                and m.split(".")[1] not in OLD_PATHS]
    assert not unplaced, unplaced
    for folder in FOLDERS:
        assert os.path.isfile(os.path.join(PACKAGE, folder, "__init__.py")), folder


def test_imports_point_downwards_through_the_layers():
    upward = [
        f"{module} -> {target}"
        for module, edges in import_graph().items() if _layer_of(module) is not None
        for target in edges if _layer_of(target) is not None
        and _layer_of(target) > _layer_of(module)
    ]
    assert not upward, upward


def test_the_experiment_machinery_analyses_and_figures_are_folders():
    graph = import_graph()
    for name in ("config", "run_folder", "run_lock", "run_data", "checkpoint", "evaluation",
                 "analyses", "runner"):
        assert f"ice_tf.experiment.{name}" in graph
    assert {"ice_tf.analysis.statistics", "ice_tf.analysis.probes",
            "ice_tf.figures.plotting", "ice_tf.figures.toy"} <= set(graph)
    # The old paths hold no code of their own: each only hands out the module it became.
    for name in OLD_PATHS[1:]:
        assert open(os.path.join(PACKAGE, f"{name}.py")).read().count("\n") < 25, name


def test_old_module_paths_still_import_with_a_deprecation_warning():
    import importlib
    import sys
    import warnings

    from ice_tf.experiment import config

    sys.modules.pop("ice_tf.config", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("ice_tf.config")
    assert old is config
    assert any("ice_tf.experiment.config" in str(w.message) for w in caught
               if issubclass(w.category, DeprecationWarning))


LONG_MODULE_LINES = 520  # "about 500"
LONG_MODULE_REASON = "Over 500 lines for a reason:"


def test_no_library_module_is_long_without_a_stated_reason():
    package = os.path.join(REPO, "ice_tf")
    long_ones = []
    for root, _, names in os.walk(package):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            text = open(path).read()
            if text.count("\n") > LONG_MODULE_LINES and LONG_MODULE_REASON not in text[:3000]:
                long_ones.append(os.path.relpath(path, REPO))
    assert not long_ones, long_ones


def test_the_training_model_is_a_package_of_its_parts():
    graph = import_graph()
    parts = {f"ice_tf.models.{name}" for name in ("ood_model", "checks", "head_fit", "convert")}
    assert parts <= set(graph)
    # The parts point one way: the model uses the checks, the head fit and the conversion.
    assert {"ice_tf.models.checks", "ice_tf.models.convert", "ice_tf.models.head_fit"} <= graph[
        "ice_tf.models.ood_model"]
    assert not any(part in graph["ice_tf.models.convert"] for part in parts)


def test_one_std_convention_for_every_mean_and_std():
    # metrics.spread (the population std) is the one rule; no module or script has its own.
    offenders = []
    for folder in ("ice_tf", "scripts"):
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                if name.endswith(".py") and "ddof=1" in open(os.path.join(root, name)).read():
                    offenders.append(os.path.join(root, name))
    assert not offenders, offenders
