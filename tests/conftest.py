"""Shared fixtures, and the slow tier. TensorFlow's C++ logging is silenced before
TensorFlow starts.

`pytest -m "not slow"` leaves out the tests below (each over about 4 s on 2 cores:
subprocesses of the commands and scripts, end-to-end runs, several workers): the fast
tier for day-to-day work. CI runs every test.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

from helpers import write_fake_embedded  # noqa: E402
from ice_tf.data import embedded  # noqa: E402


SLOW = (
    "test_analysis.py::test_analysis_table_script_over_seeds",
    "test_analysis.py::test_analysis_table_script_reads_a_comparison_folder",
    "test_benchmark_script.py::test_benchmark_script_prints_table",
    "test_benchmark_script.py::test_benchmark_script_rejects_unknown_method",
    "test_benchmark_script.py::test_rows_against_the_pytorch_reference_get_speed_ups",
    "test_calibration.py::test_script_over_seeds_averages_each_row",
    "test_calibration.py::test_script_writes_table_json_and_reliability_diagram",
    "test_callbacks.py::test_dry_run_and_run_record_the_analyses",
    "test_cli.py::test_a_bad_flag_is_one_line_naming_it",
    "test_cli.py::test_a_dry_run_from_another_directory_with_a_shipped_flag_file",
    "test_cli.py::test_bad_seeds_stop_compare_and_the_scripts_in_one_line",
    "test_cli.py::test_helpshort_from_another_directory",
    "test_cli.py::test_unknown_command_and_overview",
    "test_detectors.py::test_evaluate_script_runs_post_hoc_detectors_and_reuses_statistics",
    "test_device_check.py::test_device_check_cpu_mode_runs_every_part_and_prints_the_table",
    "test_distribute.py::test_two_replicas_match_one_device",
    "test_distribute.py::test_two_replicas_match_one_device_with_onednn_kernels",
    "test_experiment.py::test_a_run_exports_the_score_it_was_evaluated_with",
    "test_experiment.py::test_finetune_replaces_a_linear_head_by_a_gaussian_one_and_trains",
    "test_experiment.py::test_head_init_starts_the_gaussian_head_at_the_first_batches_features",
    "test_experiment.py::test_run_writes_a_complete_run_folder",
    "test_experiment.py::test_train_evaluate_export_scripts",
    "test_export.py::test_saved_model_in_a_fresh_process_equals_predict",
    "test_faults.py::test_a_run_killed_in_epoch_2_resumes_to_the_uninterrupted_result",
    "test_faults.py::test_a_run_stopped_within_an_epoch_resumes_from_its_mid_epoch_checkpoint",
    "test_faults.py::test_the_serving_signature_refuses_bad_input_without_aborting",
    "test_figures.py::test_fig3_script_oe_pulls_outliers_in_and_ice_pushes_them_out",
    "test_flagfiles.py::test_flag_file_parses_and_dry_runs",
    "test_models.py::test_head_learning_rate_scale_and_weight_decay_act_on_the_head_alone",
    "test_multi_worker.py::test_a_killed_worker_resumes_and_ends_as_an_uninterrupted_run",
    "test_multi_worker.py::test_the_overhead_script_times_the_all_reduce_on_two_workers",
    "test_multi_worker.py::test_two_worker_steps_equal_one_device",
    "test_own_data_scripts.py::test_evaluate_adapts_every_set_to_a_users_classifier",
    "test_own_data_scripts.py::test_own_folder_and_classifier_train_and_explain_the_run_folder",
    "test_own_model.py::test_a_trained_classifier_converts_and_fine_tunes_with_ice_on_real_data",
    "test_precision.py::test_a_bfloat16_step_is_finite_and_near_the_float32_step",
    "test_readme.py::test_readme_block_runs",
    "test_table2_script.py::test_table2_names_missing_runs_and_bad_method_specs",
    "test_table2_script.py::test_table2_over_seeds_gives_each_detector_its_mean_and_std",
    "test_table2_script.py::test_table2_rows_columns_and_values",
    "test_user_files.py::test_a_command_s_output_holds_no_start_up_lines",
    "test_user_files.py::test_a_cut_metrics_line_is_restored_from_the_checkpoint",
    "test_user_files.py::test_a_run_on_a_full_file_system_stops_in_one_line_without_a_crash",
    "test_user_files.py::test_ctrl_c_stops_a_command_in_one_line",
    "test_user_files.py::test_export_overwrite_replaces_an_earlier_export_only",
    "test_user_files.py::test_reports_replace_their_own_files_only",
    "test_user_files.py::test_the_current_directory_of_a_project_is_refused_in_one_line",
    "test_user_methods.py::test_a_user_loss_with_its_own_hyperparameter_trains_from_the_command_line",
    "test_user_methods.py::test_the_environment_names_modules_too_and_a_bad_module_is_one_line",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[")[0] in {f"tests/{name}" for name in SLOW}:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed_and_reset_policy():
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    fashion = write_fake_embedded(tmp_path)
    monkeypatch.setenv(embedded.EMBEDDED_DIR_ENV, str(tmp_path))
    return fashion
