"""Report wording in English and Chinese (``--lang zh``).

One dict per language with the same keys; :func:`translator` returns a lookup that
falls back to English for a key a translation lacks, so a new English string never
breaks the Chinese report. Plot axes stay in English (standard abbreviations, and the
PNGs must render without CJK fonts); captions and text around them are translated.
"""

from __future__ import annotations

from collections.abc import Callable

from medpredict.errors import unknown_choice

EN: dict[str, str] = {
    "title": "Model evaluation report",
    "generated": "Generated",
    "not_available": "Not available",
    "toc": "Contents",
    "sec_summary": "Summary",
    "sec_data": "Data and splits",
    "sec_performance": "Performance",
    "sec_calibration": "Calibration",
    "sec_threshold": "Operating threshold",
    "sec_decision": "Clinical usefulness (decision curve)",
    "sec_uncertainty": "Uncertainty and referral",
    "sec_subgroups": "Subgroups",
    "sec_shift": "External validation and data shift",
    "sec_explanations": "Explanations",
    "sec_training": "Training curves",
    "sec_limitations": "Limitations",
    "sec_tripod": "TRIPOD+AI reporting items",
    "summary_lead": "How this model performed on data it never saw during training or tuning.",
    "summary_lead_elsewhere": "How this model, trained outside medpredict, performed on this data. medpredict "
                              "cannot know which data it saw during training, so overlap with this data cannot "
                              "be ruled out.",
    "provenance": "Where each setting came from",
    "prov_training": "Training",
    "prov_calibration": "Calibration",
    "prov_threshold": "Threshold",
    "prov_conformal": "Prediction sets",
    "prov_input_guard": "Input check",
    "prov_intended_use": "Intended use",
    "intended_use": "Intended use",
    "intended_use_default": "Decision support for qualified clinicians; not for autonomous diagnosis.",
    "model": "Model",
    "dataset": "Data",
    "task": "Task",
    "split": "Split",
    "rows": "Images / rows",
    "patients": "Patients",
    "prevalence": "Prevalence",
    "events": "Positive cases",
    "metric": "Metric",
    "value": "Value",
    "ci": "95% CI",
    "auc": "AUC (area under ROC curve)",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "Positive predictive value",
    "npv": "Negative predictive value",
    "f1": "F1 score",
    "brier": "Brier score (lower is better)",
    "ci_note": "95% confidence intervals come from {n_boot} bootstrap resamples of {unit}s; "
               "{skipped} resamples with a single class were skipped.",
    "unit_patient": "patient",
    "unit_image": "image",
    "cap_roc": "ROC curve: each point trades missed cases (vertical) against false alarms (horizontal); "
               "the shaded band is the 95% range and the dot is the locked threshold.",
    "cap_pr": "Precision-recall: of the cases flagged positive, how many truly are, at each level of recall. "
              "The dashed line is the prevalence (a coin toss).",
    "cap_cm": "Confusion matrix at the locked threshold: counts of correct and wrong calls.",
    "cap_reliability": "Reliability diagram: when the model says 30%, about 30% should have the condition. "
                       "Points on the diagonal are well calibrated.",
    "cap_threshold": "Sensitivity and specificity at every threshold; the vertical line is the threshold "
                     "locked on validation data.",
    "cap_decision": "Net benefit: above both 'treat all' and 'treat none' means using the model helps "
                    "at that risk threshold.",
    "cap_referral": "Accuracy on the cases the model keeps when the most uncertain cases are referred "
                    "to a clinician.",
    "cap_forest": "AUC per subgroup with 95% CI; the vertical line is the overall AUC. Wide bars mean "
                  "few patients.",
    "cap_heatmaps": "Where the model looked (red = strongest evidence). A map is a hint, not a segmentation.",
    "cap_training": "Training and validation curves; a widening gap suggests over-fitting.",
    "cap_importance": "Global feature importance: AUC lost when a feature is shuffled.",
    "ece": "Expected calibration error",
    "slope": "Calibration slope (ideal 1)",
    "intercept": "Calibration intercept (ideal 0)",
    "citl": "Calibration-in-the-large (observed - predicted)",
    "before": "Before calibration",
    "after": "After calibration",
    "calibrator": "Calibration method",
    "threshold_value": "Locked threshold",
    "threshold_method": "Chosen by",
    "threshold_source": "Chosen on",
    "threshold_never_test": "The threshold was chosen on validation data and is never tuned on test data.",
    "threshold_default": "No threshold was locked on validation data; the default 0.5 was used.",
    "threshold_given": "The threshold was given with the model (its descriptor); medpredict did not choose it, "
                       "and how it was chosen is not known here.",
    "val_sens": "Validation sensitivity",
    "val_spec": "Validation specificity",
    "useful_range": "The model adds net benefit for risk thresholds from {lo:.0%} to {hi:.0%}.",
    "useful_none": "The model does not beat 'treat all' or 'treat none' at any threshold.",
    "conformal_line": "Prediction sets (split-conformal, target coverage {target:.0%}): the set held the "
                      "true answer for {coverage:.1%} of test cases; average set size {size:.2f}; "
                      "{single:.0%} of cases got a single answer, {empty:.0%} an empty set (treat as 'refer').",
    "referral_line": "Referring the {rate:.0%} most uncertain cases raises accuracy on the rest from "
                     "{acc0:.1%} to {acc1:.1%}.",
    "level": "Level",
    "status": "Status",
    "status_too_few": "too few cases",
    "status_one_class": "one class only",
    "shift_none": "No external-validation diagnostics were run.",
    "robustness_title": "Robustness to image corruptions (MedMNIST-C)",
    "robustness_lead": "Test AUC and accuracy (locked threshold) with every image corrupted; clean AUC {clean:.3f}, "
                       "mean AUC drop {drop:.3f}.",
    "shift_ok": "No notable shift against the development data.",
    "agreement_title": "Validation vs test",
    "agreement_lead": "Calibration, the threshold and the prediction sets were fitted on validation data; they "
                      "carry over only if the test cases resemble the validation cases. 'Differs' marks a "
                      "difference that chance does not explain (p < 0.05; 95% CIs in parentheses).",
    "agreement_ok": "Validation and test agree: the validation-fitted settings carry over.",
    "agrees": "agrees",
    "differs": "differs",
    "validation": "Validation",
    "test": "Test",
    "coverage": "Prediction-set coverage",
    "coverage_target": "{value:.0%} (target)",
    "checks": "Explanation checks",
    "randomisation": "Randomisation sanity check (maps must change when weights are randomised)",
    "faithfulness": "Faithfulness (insertion - deletion, vs random order)",
    "shortcut": "Shortcut flags (border / burned-in text)",
    "passed": "passed",
    "failed": "FAILED",
    "none": "none",
    "limitations_auto": "Automatically noted limitations",
    "lim_small": "Small test set ({n} patients): intervals are wide.",
    "lim_images_per_patient": "The bootstrap treats each image as independent because no patient ids "
                              "were given; intervals may be too narrow.",
    "lim_single_site": "Evaluated on one data source; performance elsewhere is unknown until "
                       "externally validated.",
    "lim_agreement": "The test cases differ from the validation cases (see 'Validation vs test'): "
                     "probabilities, the threshold and prediction sets fitted on validation may not hold in use.",
    "lim_calibration": "Calibration slope {slope:.2f} is far from 1: predicted risks are "
                       "{kind}; recalibrate before using them as probabilities.",
    "lim_over": "too extreme (over-confident)",
    "lim_under": "too moderate (under-confident)",
    "lim_subgroup": "Performance is clearly lower in subgroup {col} = {level} (AUC {auc:.2f}).",
    "lim_shortcut": "Some explanations point at image borders or burned-in text: check for shortcuts.",
    "lim_checks": "The explanation checks did not pass: do not rely on the heat maps.",
    "lim_generic": "Retrospective evaluation; prospective validation is needed before clinical use.",
    "tripod_note": "Items this report documents automatically. 'partial' items need the authors' input "
                   "(e.g. eligibility, dates, ethics) before publication.",
    "item": "Item",
    "topic": "Topic",
    "where": "Where",
    "covered": "covered",
    "partial": "partial",
    "footer": "Self-contained report: no external resources; readable offline.",
}

ZH: dict[str, str] = {
    "title": "模型评估报告",
    "generated": "生成时间",
    "not_available": "无数据",
    "toc": "目录",
    "sec_summary": "摘要",
    "sec_data": "数据与划分",
    "sec_performance": "性能",
    "sec_calibration": "校准",
    "sec_threshold": "决策阈值",
    "sec_decision": "临床获益（决策曲线）",
    "sec_uncertainty": "不确定性与转诊",
    "sec_subgroups": "亚组分析",
    "sec_shift": "外部验证与数据偏移",
    "sec_explanations": "可解释性",
    "sec_training": "训练曲线",
    "sec_limitations": "局限性",
    "sec_tripod": "TRIPOD+AI 报告条目",
    "summary_lead": "模型在训练和调参中从未见过的数据上的表现。",
    "summary_lead_elsewhere": "该模型在 medpredict 之外训练，本报告给出其在此数据上的表现。medpredict "
                              "无法知道其训练所用数据，因此不能排除与此数据重叠。",
    "provenance": "各项设置的来源",
    "prov_training": "训练",
    "prov_calibration": "校准",
    "prov_threshold": "阈值",
    "prov_conformal": "预测集合",
    "prov_input_guard": "输入检查",
    "prov_intended_use": "预期用途",
    "intended_use": "预期用途",
    "intended_use_default": "供有资质的临床医生辅助决策使用；不用于自主诊断。",
    "model": "模型",
    "dataset": "数据",
    "task": "任务",
    "split": "数据集",
    "rows": "图像 / 记录数",
    "patients": "患者数",
    "prevalence": "患病率",
    "events": "阳性例数",
    "metric": "指标",
    "value": "数值",
    "ci": "95% 置信区间",
    "auc": "AUC（ROC 曲线下面积）",
    "accuracy": "准确率",
    "sensitivity": "敏感度（召回率）",
    "specificity": "特异度",
    "ppv": "阳性预测值",
    "npv": "阴性预测值",
    "f1": "F1 分数",
    "brier": "Brier 分数（越低越好）",
    "ci_note": "95% 置信区间来自按{unit}进行的 {n_boot} 次自助重抽样；"
               "其中 {skipped} 次只含单一类别，已跳过。",
    "unit_patient": "患者",
    "unit_image": "图像",
    "cap_roc": "ROC 曲线：每个点权衡漏诊（纵轴）与误报（横轴）；阴影为 95% 范围，圆点为锁定阈值。",
    "cap_pr": "精确率-召回率：在各召回水平下，被判为阳性的病例中真正阳性的比例。虚线为患病率（随机水平）。",
    "cap_cm": "锁定阈值下的混淆矩阵：判断正确与错误的例数。",
    "cap_reliability": "可靠性图：模型预测 30% 时，应约有 30% 的患者确实患病。落在对角线上表示校准良好。",
    "cap_threshold": "各阈值下的敏感度与特异度；竖线为在验证集上锁定的阈值。",
    "cap_decision": "净获益：高于“全部治疗”和“全部不治疗”两条线，说明在该风险阈值下使用模型有益。",
    "cap_referral": "将最不确定的病例转诊给医生后，模型保留病例上的准确率。",
    "cap_forest": "各亚组的 AUC 及 95% 置信区间；竖线为总体 AUC。区间越宽，患者越少。",
    "cap_heatmaps": "模型关注的区域（红色为最强证据）。热图只是提示，不是分割结果。",
    "cap_training": "训练与验证曲线；两者差距扩大提示过拟合。",
    "cap_importance": "全局特征重要性：打乱某一特征后 AUC 的下降值。",
    "ece": "期望校准误差",
    "slope": "校准斜率（理想值 1）",
    "intercept": "校准截距（理想值 0）",
    "citl": "总体校准（观察值 - 预测值）",
    "before": "校准前",
    "after": "校准后",
    "calibrator": "校准方法",
    "threshold_value": "锁定阈值",
    "threshold_method": "选择方法",
    "threshold_source": "选择所用数据",
    "threshold_never_test": "阈值在验证集上选定，从不在测试集上调整。",
    "threshold_default": "未在验证集上锁定阈值，使用默认值 0.5。",
    "threshold_given": "阈值随模型（其描述文件）给出，并非 medpredict 选定；此处无法得知其选定方式。",
    "val_sens": "验证集敏感度",
    "val_spec": "验证集特异度",
    "useful_range": "在风险阈值 {lo:.0%} 至 {hi:.0%} 之间，使用模型有净获益。",
    "useful_none": "在任何阈值下，模型都不优于“全部治疗”或“全部不治疗”。",
    "conformal_line": "预测集合（分割共形预测，目标覆盖率 {target:.0%}）："
                      "{coverage:.1%} 的测试病例的集合包含真实答案；"
                      "平均集合大小 {size:.2f}；{single:.0%} 的病例得到唯一答案，"
                      "{empty:.0%} 得到空集合（按“转诊”处理）。",
    "referral_line": "将最不确定的 {rate:.0%} 病例转诊后，其余病例的准确率从 {acc0:.1%} 提高到 {acc1:.1%}。",
    "level": "水平",
    "status": "状态",
    "status_too_few": "病例过少",
    "status_one_class": "仅含单一类别",
    "shift_none": "未进行外部验证诊断。",
    "robustness_title": "图像退化下的稳健性（MedMNIST-C）",
    "robustness_lead": "所有图像加入退化后的测试 AUC 与准确率（锁定阈值）；"
                       "原始 AUC {clean:.3f}，AUC 平均下降 {drop:.3f}。",
    "shift_ok": "与开发数据相比未见明显偏移。",
    "agreement_title": "验证集与测试集对比",
    "agreement_lead": "校准、阈值和预测集合均在验证数据上拟合；只有当测试病例与验证病例相似时它们才适用。"
                      "“不一致”表示差异不能用偶然解释（p < 0.05；括号内为 95% 置信区间）。",
    "agreement_ok": "验证集与测试集一致：在验证集上拟合的设置可以沿用。",
    "agrees": "一致",
    "differs": "不一致",
    "validation": "验证集",
    "test": "测试集",
    "coverage": "预测集合覆盖率",
    "coverage_target": "{value:.0%}（目标）",
    "checks": "可解释性检查",
    "randomisation": "随机化合理性检查（权重随机化后热图应改变）",
    "faithfulness": "忠实度（插入 - 删除，相对随机顺序）",
    "shortcut": "捷径标记（边缘 / 图像内嵌文字）",
    "passed": "通过",
    "failed": "未通过",
    "none": "无",
    "limitations_auto": "自动识别的局限性",
    "lim_small": "测试集较小（{n} 名患者）：置信区间较宽。",
    "lim_images_per_patient": "未提供患者编号，自助法将每张图像视为独立样本；置信区间可能偏窄。",
    "lim_single_site": "仅在单一数据来源上评估；在其他机构的表现需经外部验证。",
    "lim_agreement": "测试病例与验证病例不同（见“验证集与测试集对比”）："
                     "在验证集上拟合的概率、阈值和预测集合在使用中可能不成立。",
    "lim_calibration": "校准斜率为 {slope:.2f}，明显偏离 1：预测风险{kind}；作为概率使用前需重新校准。",
    "lim_over": "过于极端（过度自信）",
    "lim_under": "过于保守（自信不足）",
    "lim_subgroup": "亚组 {col} = {level} 的性能明显较低（AUC {auc:.2f}）。",
    "lim_shortcut": "部分解释热图集中于图像边缘或内嵌文字：请检查是否存在捷径学习。",
    "lim_checks": "可解释性检查未通过：请勿依赖热图。",
    "lim_generic": "本评估为回顾性研究；临床使用前需要前瞻性验证。",
    "tripod_note": "本报告自动记录的条目。标为“部分”的条目在发表前需作者补充（如纳入标准、时间、伦理审批）。",
    "item": "条目",
    "topic": "主题",
    "where": "位置",
    "covered": "已覆盖",
    "partial": "部分",
    "footer": "独立报告：不依赖任何外部资源，可离线阅读。",
}

LANGUAGES: dict[str, dict[str, str]] = {"en": EN, "zh": ZH}


def translator(lang: str = "en") -> Callable[..., str]:
    """Return ``t(key, **fields)`` for ``lang``; unknown keys fall back to English, then the key.

    Raises:
        ConfigError: ``lang`` is not one of :data:`LANGUAGES` (with a suggestion).
    """
    if lang not in LANGUAGES:
        raise unknown_choice("report language", lang, LANGUAGES)
    table = LANGUAGES[lang]

    def t(key: str, **fields: object) -> str:
        text = table.get(key) or EN.get(key) or key
        return text.format(**fields) if fields else text

    return t
