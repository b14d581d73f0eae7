/// The wordcount-dart service (examples/wordcount-dart), a process cell written with this
/// SDK: the same verb as examples/wordcount-python. `cellbus call wordcount-dart.count '{"text":"to be or not
/// to be"}'` replies {"words": 6, "distinct": 4, "top": ["be", "to"]}.
library;

import 'package:cellbus_cell/cellbus_cell.dart';

const _trim = '.,;:!?"\'()';

String _clean(String word) {
  var start = 0;
  var end = word.length;
  while (start < end && _trim.contains(word[start])) {
    start++;
  }
  while (end > start && _trim.contains(word[end - 1])) {
    end--;
  }
  return word.substring(start, end).toLowerCase();
}

Object? count(Object? payload, Request request) {
  final fields = payload is Map ? payload : const {};
  final text = fields['text'];
  if (text is! String) {
    throw CellError('bad_request', 'text must be a string',
        details: {'field': 'text'});
  }
  final limit = fields['limit'] is int ? fields['limit'] as int : 3;
  final seen = <String, int>{};
  for (final raw in text.split(RegExp(r'\s+'))) {
    final word = _clean(raw);
    if (word.isNotEmpty) seen[word] = (seen[word] ?? 0) + 1;
  }
  final most = seen.entries.toList()
    ..sort((a, b) =>
        a.value != b.value ? b.value.compareTo(a.value) : a.key.compareTo(b.key));
  final top = most.isEmpty
      ? <String>[]
      : most
          .where((entry) => entry.value == most.first.value)
          .map((entry) => entry.key)
          .take(limit)
          .toList();
  return {
    'words': seen.values.fold<int>(0, (sum, n) => sum + n),
    'distinct': seen.length,
    'top': top,
  };
}

Future<void> main() => serve({'count': count});
