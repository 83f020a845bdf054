-- Group commit (settlement pipeline): a settlement's fee lines live in its own row.
--
-- Nothing ever read a settlement's lines one by one; as rows of their own they cost every
-- settlement two or three heap rows and primary-key entries. As one jsonb column they are
-- written with the settlement and read with it (the review queue, the visit). Each element
-- keeps the columns the table had: line_no, code, chrgitm_lv, unit_price, quantity, total,
-- overlmt_selfpay, fulamt_ownpay_amt, preselfpay_amt, inscp_scp_amt.
ALTER TABLE settlements ADD COLUMN lines jsonb NOT NULL DEFAULT '[]';

UPDATE settlements s SET lines = l.lines
FROM (
    SELECT setl_id, jsonb_agg(jsonb_build_object(
        'line_no', line_no, 'code', code, 'chrgitm_lv', chrgitm_lv,
        'unit_price', unit_price, 'quantity', quantity, 'total', total,
        'overlmt_selfpay', overlmt_selfpay, 'fulamt_ownpay_amt', fulamt_ownpay_amt,
        'preselfpay_amt', preselfpay_amt, 'inscp_scp_amt', inscp_scp_amt
    ) ORDER BY line_no) AS lines
    FROM settlement_lines GROUP BY setl_id
) l
WHERE s.setl_id = l.setl_id;

DROP TABLE settlement_lines;
