"""Distil a text classifier: fine-tune the teacher if needed, distil a student, train a no-KD baseline, compare.

    python recipes/text_classification.py                       # embedded default: MiniLM teacher, movie reviews
    python recipes/text_classification.py recipes/configs/text_classification.yaml
    python recipes/text_classification.py --train_file reviews.csv --text_column review --label_column stars
    python recipes/text_classification.py --hidden_weight 0 --attention_weight 0 --teacher_logits_cache_dir logits
    python recipes/text_classification.py --search_trials 20    # first search temperature and α (optuna)
    python recipes/text_classification.py --export onnx --quantize int8   # also ship ONNX and int8 ONNX students

The fourth runs logit KD alone from the teacher's top-k logits, cached once under logits/ (see README). With
--search_trials, the search's trials run under output_dir/search, the student is distilled with the best setting,
and results.json keeps the search under "search".

Writes the student (loadable with AutoModelForSequenceClassification), its tokenizer, its model card (README.md),
quality_vs_latency.png, loss_curves.png and results.json to --output_dir, with the baseline under
output_dir/baseline; with --export onnx / --quantize int8 also student.onnx / student.int8.onnx (pip install
"nlpkd[export]"), measured next to the others. With --push_to_hub --hub_model_id NAME the student folder goes to the
Hub (the student alone, with its ONNX forms when made).

The recipe's code is nlpkd.recipes.text_classification (nlpkd/recipes/text_classification.py).
"""

from nlpkd.recipes.text_classification import main

if __name__ == "__main__":
    main()
