"""Which teacher layer each student layer learns from (TinyBERT's layer mapping)."""


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """TinyBERT's uniform map g(m) = m·N/M (rounded down) for student layers m = 1..M; the last maps to N."""
    return [m * num_teacher_layers // num_student_layers for m in range(1, num_student_layers + 1)]


def resolve_layer_map(layer_map: list[int] | None, num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """Return `layer_map` (or the uniform map when None) after checking it against both models' depths."""
    if num_student_layers > num_teacher_layers:
        raise ValueError(
            f"The student has more layers ({num_student_layers}) than the teacher ({num_teacher_layers}); "
            "use a student with at most as many layers as its teacher."
        )
    if layer_map is None:
        return uniform_layer_map(num_student_layers, num_teacher_layers)
    if len(layer_map) != num_student_layers:
        raise ValueError(
            f"layer_map has {len(layer_map)} entries {layer_map} but the student has {num_student_layers} layers; "
            "give one teacher layer per student layer."
        )
    out_of_range = [g for g in layer_map if not 1 <= g <= num_teacher_layers]
    if out_of_range:
        raise ValueError(
            f"layer_map {layer_map} names teacher layers {out_of_range}, but the teacher has layers "
            f"1..{num_teacher_layers} (0, the embeddings, is always mapped to the student's embeddings)."
        )
    return list(layer_map)
